package cli

import (
	"strings"
	"testing"
)

// TestTerminalSafe: names peers chose cannot put escape sequences on the
// operator's terminal through trellis's tables.
func TestTerminalSafe(t *testing.T) {
	var b strings.Builder
	w := terminalSafe(&b)
	if _, err := w.Write([]byte("pod\x1b[2J\x1b]0;owned\x07\tready\u009b\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != "pod[2J]0;owned\tready\n" {
		t.Errorf("written %q", got)
	}
}
