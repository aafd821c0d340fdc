package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
func checkJSON(b []byte) error {
	if !utf8.Valid(b) {
		return errors.New("not valid UTF-8")
	}
	if err := checkSurrogates(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := checkValue(dec, 0); err != nil {
		return err
	}
	return nil
}

// checkSurrogates reports a \u escape of a UTF-16 surrogate that is not
// half of a pair.
func checkSurrogates(b []byte) error {
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString && i+1 < len(b):
			if b[i+1] != 'u' {
				i++ // a one-character escape, such as \" or \\
				continue
			}
			r, ok := hex4(b, i+2)
			switch {
			case !ok:
				return nil // malformed: the decoder will say so
			case utf16.IsSurrogate(r) && r < 0xdc00:
				low, ok := rune(0), i+12 <= len(b) && b[i+6] == '\\' && b[i+7] == 'u'
				if ok {
					low, ok = hex4(b, i+8)
				}
				if !ok || low < 0xdc00 || low > 0xdfff {
					return fmt.Errorf("escape \\u%04x at byte %d is half of a surrogate pair", r, i)
				}
				i += 11
			case utf16.IsSurrogate(r):
				return fmt.Errorf("escape \\u%04x at byte %d is half of a surrogate pair", r, i)
			default:
				i += 5
			}
		}
	}
	return nil
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

// maxDepth bounds the nesting checkValue follows.
const maxDepth = 64

func checkValue(dec *json.Decoder, depth int) error {
	if depth > maxDepth {
		return errors.New("nested too deeply")
	}
	t, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty document")
		}
		return err
	}
	d, ok := t.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			name, _ := k.(string)
			if seen[foldName(name)] {
				return fmt.Errorf("member %q appears twice in one object (names are matched without regard to case)", name)
			}
			seen[foldName(name)] = true
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := checkValue(dec, depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}
