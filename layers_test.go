package kvd

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// layers is the one table of the import arrows: each package of the
// module and the packages of the module it may import (the root is "kvd").
// A package missing from it fails TestLayers: a new package takes its
// place here, and in docs/architecture.md, which shows this table.
var layers = []struct {
	pkg, mayImport string
}{
	{"kvd", "-"},
	{"api", "kvd"},
	{"backup", "-"},
	{"console", "-"},
	{"internal/backoff", "-"},
	{"internal/failpoint", "-"},
	{"internal/fsutil", "-"},
	{"internal/load", "-"},
	{"internal/atrest", "-"},
	{"internal/pki", "internal/fsutil"},
	{"internal/wire", "kvd api"},
	{"store", "kvd api internal/atrest internal/failpoint internal/fsutil"},
	{"replication", "kvd store internal/atrest internal/backoff internal/failpoint internal/fsutil"},
	{"txn", "kvd api store internal/backoff internal/failpoint"},
	{"server", "kvd api backup store replication txn internal/atrest internal/backoff internal/failpoint internal/fsutil internal/pki internal/wire"},
	{"httpapi", "kvd api backup console internal/backoff internal/failpoint internal/wire"},
	{"node", "server httpapi"},
	{"embed", "kvd api backup server internal/atrest"},
	{"client", "kvd api backup internal/atrest internal/backoff internal/wire"},
	{"shell", "kvd api backup client internal/atrest internal/fsutil internal/wire"},
	{"cmd/kvd", "kvd client node server store internal/atrest internal/fsutil internal/pki"},
	{"cmd/kvcli", "kvd client shell internal/pki"},
	{"cmd/kvbench", "kvd api client internal/load internal/pki"},
	{"examples/functions", "kvd client embed"},
	{"internal/testkit/damage", "-"},
	{"internal/testkit/faultproxy", "-"},
	{"internal/testkit/kvdproc", "kvd api"},
	{"internal/testkit/kvtest", "kvd"},
	{"internal/testkit/testcluster", "kvd api node server replication internal/pki"},
	{"jepsen", "kvd api backup internal/failpoint internal/testkit/faultproxy internal/testkit/kvdproc"},
	{"jepsen/cmd/kvd-jepsen", "jepsen"},
	{"jepsen/cmd/kvd-mutants", "jepsen internal/failpoint internal/testkit/kvdproc"},
}

// banned are dependencies, direct or not, that a package must not pull
// in: the low layers stay free of the libraries of the high ones, the
// client of the server's, and the embedded store of the HTTP API.
var banned = map[string][]string{
	"kvd":         {"github.com/"},
	"api":         {"github.com/hashicorp/", "github.com/gorilla/", "github.com/prometheus/", "go.etcd.io/"},
	"store":       {"github.com/hashicorp/raft", "github.com/gorilla/mux"},
	"replication": {"github.com/gorilla/mux"},
	"txn":         {"github.com/hashicorp/raft", "github.com/gorilla/mux"},
	"httpapi":     {"github.com/hashicorp/raft", "go.etcd.io/bbolt"},
	"client":      {"github.com/hashicorp/raft", "go.etcd.io/bbolt", "github.com/gorilla/mux"},
	"embed":       {"github.com/kvd-project/kvd/httpapi", "github.com/gorilla/mux"},
}

// layersMarkdown renders the table as docs/architecture.md shows it.
func layersMarkdown() string {
	var b strings.Builder
	b.WriteString("| package | may import |\n|---|---|\n")
	for _, l := range layers {
		fmt.Fprintf(&b, "| `%s` | %s |\n", l.pkg, l.mayImport)
	}
	return b.String()
}

// TestLayers holds the import arrows of the design: every package is in
// the table, imports only what its row allows, and pulls in none of its
// banned dependencies; docs/architecture.md shows the same table.
func TestLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const mod = "github.com/kvd-project/kvd"
	short := func(p string) string {
		if p == mod {
			return "kvd"
		}
		return strings.TrimPrefix(p, mod+"/")
	}
	allowed := map[string]map[string]bool{}
	for _, l := range layers {
		allowed[l.pkg] = map[string]bool{}
		for _, d := range strings.Fields(l.mayImport) {
			allowed[l.pkg][d] = true
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{join .Imports " "}}|{{join .Deps " "}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		pkg := short(f[0])
		may, ok := allowed[pkg]
		if !ok {
			t.Errorf("%s is not in the layer table: give it a row in layers_test.go and docs/architecture.md", pkg)
			continue
		}
		for _, imp := range strings.Fields(f[1]) {
			if (imp == mod || strings.HasPrefix(imp, mod+"/")) && !may[short(imp)] {
				t.Errorf("%s imports %s; its row allows %q", pkg, short(imp), strings.Join(slices.Sorted(maps.Keys(may)), " "))
			}
		}
		for _, d := range strings.Fields(f[2]) {
			for _, ban := range banned[pkg] {
				if d == strings.TrimSuffix(ban, "/") || strings.HasPrefix(d, strings.TrimSuffix(ban, "/")+"/") {
					t.Errorf("%s must not depend on %s", pkg, d)
				}
			}
		}
	}
	doc, err := os.ReadFile("docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), layersMarkdown()) {
		t.Errorf("docs/architecture.md must show the layer table as it is:\n%s", layersMarkdown())
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
	// The patterns of RACE_PKGS and of the test target's own commands:
	// not those of other targets (test-short runs ./...).
	var patterns []string
	target := ""
	for _, line := range strings.Split(string(mk), "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "\t") && !strings.Contains(name, " ") {
			target = name
		}
		if strings.HasPrefix(line, "RACE_PKGS :=") || (target == "test" && strings.Contains(line, "$(GO) test ")) {
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
