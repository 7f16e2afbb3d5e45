package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// panics counts handler panics since start (trellis_proxy_panics_total).
var panics atomic.Int64

// serveConn runs handle for one connection on its own goroutine; a panic
// in it closes that connection, is logged with its stack and counted,
// and never takes the sidecar down.
func serveConn(c net.Conn, handle func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				panics.Add(1)
				slog.Error("panic serving a connection; it is closed", "from", c.RemoteAddr(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				c.Close()
			}
		}()
		handle()
	}()
}

// countPanics counts a panic of an HTTP handler and lets it go on to
// net/http, which closes the connection (a stream, on HTTP/2) and logs it.
// http.ErrAbortHandler is the proxy's own way to abort a response, not a
// fault.
func countPanics() {
	if r := recover(); r != nil {
		if err, ok := r.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
			panics.Add(1)
		}
		panic(r)
	}
}

// refusals is the log of refused connections and requests: a client can
// cause one per connection, so at most one line a second is written per
// kind, saying how many were left out since.
var refusals = &rateLog{}

type rateLog struct {
	mu    sync.Mutex
	last  map[string]time.Time // guarded by mu: by message
	quiet map[string]int       // guarded by mu: left out since
}

// log writes msg at level, unless msg was written less than a second ago.
func (r *rateLog) log(level slog.Level, msg string, args ...any) {
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
		args = append(args, "alsoRefusedSinceLastLine", left)
	}
	slog.Log(context.Background(), level, msg, args...)
}
