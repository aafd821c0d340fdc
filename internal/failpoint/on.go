//go:build failpoints

package failpoint

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Enabled says whether this build has failpoints and mutants.
const Enabled = true

// mutant names the planted bug of this build (set with -ldflags -X).
var mutant string

var (
	mu    sync.Mutex
	armed = map[string]string{} // failpoint → action
)

// Hit crashes the process if failpoint name is armed with "crash": with
// SIGKILL, so that nothing is flushed or closed, as a power cut or kill -9
// would leave it.
func Hit(name string) {
	mu.Lock()
	action := armed[name]
	if action == "crash-once" {
		delete(armed, name)
	}
	mu.Unlock()
	if action == "" {
		return
	}
	if d, ok := strings.CutPrefix(action, "pause="); ok {
		pause, _ := time.ParseDuration(d)
		slog.Warn("failpoint: pausing", "failpoint", name, "for", pause)
		time.Sleep(pause)
		return
	}
	slog.Warn("failpoint: crashing the node", "failpoint", name)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// Mutant says whether the planted bug name is active in this build.
func Mutant(name string) bool { return mutant != "" && mutant == name }

// Handler serves /debug/failpoints/{name}: GET lists the armed
// failpoints and the mutant; PUT with body "crash", "crash-once" or
// "pause=DURATION" (at most a minute; each pass waits that long) arms one;
// DELETE disarms it.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/debug/failpoints/")
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet:
			mu.Lock()
			b, _ := json.Marshal(map[string]any{"armed": armed, "mutant": mutant, "failpoints": Failpoints})
			mu.Unlock()
			w.Write(b)
		case !slices.Contains(Failpoints, name):
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"error":{"code":"not_found","message":"no failpoint %q"}}`, name)
		case r.Method == http.MethodPut:
			b, _ := io.ReadAll(io.LimitReader(r.Body, 64))
			action := strings.TrimSpace(string(b))
			d, pause := strings.CutPrefix(action, "pause=")
			pd, perr := time.ParseDuration(d)
			if action != "crash" && action != "crash-once" && (!pause || perr != nil || pd <= 0 || pd > time.Minute) {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"error":{"code":"invalid","message":"action %q: want crash, crash-once or pause=DURATION (up to 1m)"}}`, action)
				return
			}
			mu.Lock()
			armed[name] = action
			mu.Unlock()
			w.Write([]byte("{}"))
		case r.Method == http.MethodDelete:
			mu.Lock()
			delete(armed, name)
			mu.Unlock()
			w.Write([]byte("{}"))
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
			w.Write([]byte(`{"error":{"code":"invalid","message":"method not allowed"}}`))
		}
	})
}
