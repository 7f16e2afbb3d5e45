package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync/atomic"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// panics counts handler panics since start (trellis_proxy_panics_total).
var panics atomic.Int64

// serveConn runs handle for one connection on its own goroutine; a panic
// in it closes that connection, is logged with its stack and counted,
// and never takes the sidecar down.
func serveConn(c net.Conn, handle func()) { go contained(c, handle) }

// contained is serveConn's handle run on the calling goroutine.
func contained(c net.Conn, handle func()) {
	defer func() {
		if r := recover(); r != nil {
			panics.Add(1)
			slog.Error("panic serving a connection; it is closed", "from", c.RemoteAddr(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.Close()
		}
	}()
	handle()
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
var refusals = &ratelog.Logger{}
