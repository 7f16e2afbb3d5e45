package telemetry

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxValueBytes caps a value from the wire that becomes a label, span
// attribute or log field.
const MaxValueBytes = 256

// CleanValue makes a value from the wire safe to record: invalid UTF-8 is
// replaced, control characters dropped, and the length capped at
// MaxValueBytes (on a character boundary).
func CleanValue(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 {
			clean = false
			break
		}
	}
	if clean && len(s) <= MaxValueBytes {
		return s
	}
	if len(s) > 4*MaxValueBytes { // no need to look further
		s = s[:4*MaxValueBytes]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	if len(s) > MaxValueBytes {
		cut := MaxValueBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
