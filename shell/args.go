package shell

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
)

// args are a command's parsed arguments.
type args struct {
	// cmd is the command they were parsed for; its usage line is the
	// answer to a wrong number of arguments.
	cmd *command
	pos []string
	// flags holds each flag given, with its last value; given holds
	// every flag as given, in order, for the flags a command repeats.
	flags map[string]string
	given []flagArg
}

// flagArg is one flag as given.
type flagArg struct{ name, value string }

// has reports whether flag name was given.
func (a *args) has(name string) bool { _, ok := a.flags[name]; return ok }

// parse separates flags (--name, --name=value, --name value) from
// positional arguments, in any order; "--" ends the flags.
func parse(c *command, words []string) (*args, error) {
	a := &args{cmd: c, flags: map[string]string{}}
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			a.pos = append(a.pos, words[i+1:]...)
			break
		}
		if !strings.HasPrefix(w, "--") {
			a.pos = append(a.pos, w)
			continue
		}
		name, val, hasVal := strings.Cut(w[2:], "=")
		takes, ok := c.flags[name]
		if !ok {
			return nil, usagef("%s: unknown flag --%s (usage: %s %s)", c.name, name, c.name, c.args)
		}
		if takes && !hasVal {
			if i+1 >= len(words) {
				return nil, usagef("%s: --%s needs a value", c.name, name)
			}
			i++
			val = words[i]
		}
		a.flags[name] = val
		a.given = append(a.given, flagArg{name, val})
	}
	return a, nil
}

// want checks that between min and max positional arguments were given.
func (a *args) want(min, max int) error {
	if len(a.pos) < min || len(a.pos) > max {
		return usagef("usage: %s %s", a.cmd.name, a.cmd.args)
	}
	return nil
}

// optional returns the first positional argument, def if there is none.
func (a *args) optional(def string) string {
	if len(a.pos) > 0 {
		return a.pos[0]
	}
	return def
}

// consistency returns the read consistency --consistency asks for, else
// the shell's.
func (s *Shell) consistency(a *args) (kvd.Consistency, error) {
	if v, ok := a.flags["consistency"]; ok {
		c, err := kvd.ParseConsistency(v)
		if err != nil {
			return "", usagef("%v", err)
		}
		return c, nil
	}
	return s.o.Consistency, nil
}

// value reads a put's value: the argument, @FILE, or - for stdin.
func (s *Shell) value(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		b, err := io.ReadAll(s.in)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return b, nil
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, usagef("cannot read the value: %v", err)
		}
		return b, nil
	}
	return []byte(arg), nil
}

// writeOpts turns --if-version, --create-only and --ttl into write
// options.
func writeOpts(a *args) ([]kvd.WriteOption, error) {
	var opts []kvd.WriteOption
	if v, ok := a.flags["if-version"]; ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, usagef("--if-version needs a version number, not %q", v)
		}
		opts = append(opts, kvd.IfVersion(n))
	}
	if a.has("create-only") {
		if len(opts) > 0 {
			return nil, usagef("use --if-version or --create-only, not both")
		}
		opts = append(opts, kvd.CreateOnly())
	}
	if v, ok := a.flags["ttl"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, usagef("--ttl needs a positive duration such as 30s, not %q", v)
		}
		opts = append(opts, kvd.WithTTL(d))
	}
	return opts, nil
}
