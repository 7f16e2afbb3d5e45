// Package safehttp builds the HTTP servers of Trellis's own endpoints (the
// one-host API, metrics, health, example workloads) with the safety
// defaults every listener must have: Go's zero values leave slowloris and
// unbounded headers open. The proxy's data-plane servers set their own
// limits (streaming requests cannot have whole-request timeouts).
package safehttp

import (
	"net/http"
	"time"
)

// Server returns a server for h with a 10 s header read timeout, 30 s read
// and write timeouts, a 5 min idle timeout and 64 KiB of headers at most.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
