package kvd

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestLayers holds the import arrows of the design: nothing imports
// upward, and the low layers stay free of the high ones.
func TestLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	const mod = "github.com/kvd-project/kvd"
	forbidden := map[string][]string{
		mod + "/store":       {"/replication", "/httpapi", "/server", "/client", "/txn", "github.com/hashicorp/raft", "github.com/gorilla/mux"},
		mod + "/replication": {"/httpapi", "/server", "/client", "github.com/gorilla/mux"},
		mod + "/api":         {mod + "/", "github.com/"},
		mod + "/httpapi":     {"/server", "/replication", "/store", "github.com/hashicorp/raft"},
		mod + "/client":      {"/server", "/replication", "/store", "/httpapi", "github.com/hashicorp/raft", "go.etcd.io/bbolt", "github.com/gorilla/mux"},
		mod:                  {mod + "/"},
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, deps := fields[0], fields[1:]
		bans, ok := forbidden[pkg]
		if !ok {
			continue
		}
		for _, d := range deps {
			for _, ban := range bans {
				target := ban
				if strings.HasPrefix(ban, "/") {
					target = mod + ban
				}
				if d == target || strings.HasPrefix(d, strings.TrimSuffix(target, "/")+"/") || (strings.HasSuffix(ban, "/") && strings.HasPrefix(d, ban)) {
					t.Errorf("%s must not depend on %s", pkg, d)
				}
			}
		}
	}
}

// TestMakeTestRunsEveryPackage checks that `make test` covers every
// package that has tests: a package missing from its lists would never
// run in CI.
func TestMakeTestRunsEveryPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	mk, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(mk), "\n") {
		if strings.HasPrefix(line, "RACE_PKGS :=") || (strings.Contains(line, "$(GO) test ") && !strings.Contains(line, "-bench")) {
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, "./") {
					patterns = append(patterns, f)
				}
			}
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{if or .TestGoFiles .XTestGoFiles}}{{.Dir}}{{end}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	root, _ := os.Getwd()
	for _, dir := range strings.Fields(string(out)) {
		rel := "./" + strings.TrimPrefix(strings.TrimPrefix(dir, root), "/")
		if rel == "./" {
			continue // the root runs with the race list
		}
		covered := false
		for _, p := range patterns {
			base := strings.TrimSuffix(p, "/...")
			covered = covered || rel == p || (strings.HasSuffix(p, "/...") && (rel == base || strings.HasPrefix(rel, base+"/")))
		}
		if !covered {
			t.Errorf("%s has tests but make test does not run it", rel)
		}
	}
}
