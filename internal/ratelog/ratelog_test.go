package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A flood of one message writes one line a second, the next saying how
// many were left out; another message is not held back by it.
func TestLoggerBoundsAFlood(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(prev)
	var l Logger
	for range 1000 {
		l.Log(slog.LevelWarn, "refused", "from", "x")
	}
	l.Log(slog.LevelWarn, "other")
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d lines for a flood of 1000 and one other, want 2:\n%s", n, buf.String())
	}
	time.Sleep(1100 * time.Millisecond)
	l.Log(slog.LevelWarn, "refused", "from", "x")
	if !strings.Contains(buf.String(), "leftOutSinceLastLine=999") {
		t.Errorf("the next line does not count what was left out:\n%s", buf.String())
	}
}
