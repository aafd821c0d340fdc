package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// checkJSON reports a document that Go's decoder would read differently
// from what it says: one whose objects repeat a member name (the decoder
// keeps the last and drops the others without a word, so a body with
// "ops" twice would lose the first list; and it matches names to fields
// without regard to case, so "ops" and "OPS" are the same member), and
// one with invalid UTF-8 or a lone surrogate escape (the decoder turns
// both into U+FFFD, so two different keys would name the same one).
//
// It reads the raw bytes once, without decoding values: malformed JSON is
// left to the decoder, which reports it.
func checkJSON(b []byte) error {
	if !utf8.Valid(b) {
		return errors.New("not valid UTF-8")
	}
	var stack []*members // one per open object; nil for an array
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '{', '[':
			if len(stack) >= maxDepth {
				return errors.New("nested too deeply")
			}
			var o *members
			if b[i] == '{' {
				o = &members{nameNext: true}
			}
			stack = append(stack, o)
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case ',':
			if n := len(stack); n > 0 && stack[n-1] != nil {
				stack[n-1].nameNext = true
			}
		case '"':
			end, escaped, err := stringEnd(b, i)
			if err != nil || end < 0 {
				return err // an unterminated string is the decoder's to report
			}
			if n := len(stack); n > 0 && stack[n-1] != nil && stack[n-1].nameNext {
				o := stack[n-1]
				o.nameNext = false
				name := string(b[i+1 : end])
				if escaped && json.Unmarshal(b[i:end+1], &name) != nil {
					return nil // malformed: the decoder will say so
				}
				if !o.add(foldName(name)) {
					return fmt.Errorf("member %q appears twice in one object (names are matched without regard to case)", name)
				}
			}
			i = end
		}
	}
	return nil
}

// maxDepth bounds the nesting checkJSON follows.
const maxDepth = 64

// members are the folded member names of one object read so far.
type members struct {
	nameNext bool // the next string is a member name
	names    []string
	set      map[string]bool // past a few names
}

// add adds a folded name, and reports whether it was new.
func (m *members) add(name string) bool {
	if m.set != nil {
		if m.set[name] {
			return false
		}
		m.set[name] = true
		return true
	}
	for _, n := range m.names {
		if n == name {
			return false
		}
	}
	m.names = append(m.names, name)
	if len(m.names) > 8 {
		m.set = make(map[string]bool, 2*len(m.names))
		for _, n := range m.names {
			m.set[n] = true
		}
	}
	return true
}

// stringEnd returns the index of the quote that ends the string starting
// at b[i] (-1 if none does) and whether the string has escapes. It
// reports a \u escape of a UTF-16 surrogate that is not half of a pair:
// the decoder would turn it into U+FFFD, so two different keys would name
// the same one.
func stringEnd(b []byte, i int) (end int, escaped bool, err error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '"':
			return j, escaped, nil
		case '\\':
			escaped = true
			if j+1 >= len(b) || b[j+1] != 'u' {
				j++ // a one-character escape, such as \" or \\
				continue
			}
			r, ok := hex4(b, j+2)
			switch {
			case !ok:
				return -1, escaped, nil // malformed: the decoder will say so
			case utf16.IsSurrogate(r) && r < 0xdc00:
				low, ok := rune(0), j+12 <= len(b) && b[j+6] == '\\' && b[j+7] == 'u'
				if ok {
					low, ok = hex4(b, j+8)
				}
				if !ok || low < 0xdc00 || low > 0xdfff {
					return -1, escaped, fmt.Errorf("escape \\u%04x at byte %d is half of a surrogate pair", r, j)
				}
				j += 11
			case utf16.IsSurrogate(r):
				return -1, escaped, fmt.Errorf("escape \\u%04x at byte %d is half of a surrogate pair", r, j)
			default:
				j += 5
			}
		}
	}
	return -1, escaped, nil
}

// hex4 decodes the four hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// foldName returns the same string for two member names exactly when
// Go's decoder takes them for the same field (Unicode simple folding:
// "ops", "OPS", and "opſ" with a long s are one name).
func foldName(s string) string {
	ascii := true
	for i := 0; i < len(s) && ascii; i++ {
		ascii = s[i] < utf8.RuneSelf
	}
	if ascii {
		// Every ASCII letter's orbit is its two cases (k and s add a
		// rune past ASCII, never below): the least is the upper case.
		return strings.ToUpper(s)
	}
	var b strings.Builder
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}
