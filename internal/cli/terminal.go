package cli

import (
	"io"
	"strings"
	"unicode"
)

// terminalSafe writes to w without control characters other than tab and
// newline: tables show names and values peers chose (pod and workload
// names, paths, metric labels), and an escape sequence among them must
// not reach the terminal.
func terminalSafe(w io.Writer) io.Writer { return safeWriter{w} }

type safeWriter struct{ w io.Writer }

func (s safeWriter) Write(p []byte) (int, error) {
	clean := strings.Map(func(r rune) rune {
		if r != '\t' && r != '\n' && unicode.IsControl(r) {
			return -1
		}
		return r
	}, string(p))
	if _, err := io.WriteString(s.w, clean); err != nil {
		return 0, err
	}
	return len(p), nil
}
