// Package ratelog writes log lines a stranger can cause (a refused
// connection, request or certificate) at most once a second per message,
// saying how many were left out since: logs stay readable and bounded
// under a flood.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logger rate-limits by message. The zero value is ready to use; safe for
// concurrent use.
type Logger struct {
	mu    sync.Mutex
	last  map[string]time.Time // guarded by mu: by message
	quiet map[string]int       // guarded by mu: left out since
}

// Log writes msg at level with args, unless msg was written less than a
// second ago.
func (r *Logger) Log(level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.quiet = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if now.Sub(r.last[msg]) < time.Second {
		r.quiet[msg]++
		r.mu.Unlock()
		return
	}
	left := r.quiet[msg]
	r.last[msg], r.quiet[msg] = now, 0
	r.mu.Unlock()
	if left > 0 {
		args = append(args, "leftOutSinceLastLine", left)
	}
	slog.Log(context.Background(), level, msg, args...)
}
