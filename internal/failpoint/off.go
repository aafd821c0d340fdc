//go:build !failpoints

package failpoint

import "net/http"

// Enabled says whether this build has failpoints and mutants.
const Enabled = false

// Hit marks the failpoint name: a no-op in this build.
func Hit(name string) {}

// Mutant says whether the planted bug name is active: never in this
// build.
func Mutant(name string) bool { return false }

// Handler is the failpoint control endpoint: none in this build.
func Handler() http.Handler { return nil }
