// Package unixapi is the shape of Trellis's local admin APIs: JSON over
// HTTP on a Unix socket only root may open. The one-host runtime
// (internal/localmesh) and the control plane (internal/controlplane)
// serve theirs with Listen and WriteJSON, and call them with Client.
// Errors travel as {"error": "..."} with a 4xx or 5xx status.
package unixapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// Errors of Client.Do when the call never reached a server.
var (
	// ErrRootOnly: the socket exists, and this user may not open it.
	ErrRootOnly = errors.New("the socket is root-only")
	// ErrNoServer: nothing listens on the socket.
	ErrNoServer = errors.New("nothing answers on the socket")
)

// Listen listens on the socket path, replacing a stale socket file, and
// makes it mode 0600. The caller must know no one else serves it.
func Listen(path string) (net.Listener, error) {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict %s: %w", path, err)
	}
	return ln, nil
}

// WriteJSON answers with v as JSON and the status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers {"error": msg} with the status code.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}

// Client calls an API on one socket. Safe for concurrent use.
type Client struct {
	sock string
	hc   *http.Client
}

// NewClient returns a client for the socket at sock whose calls give up
// after timeout. It does not connect until a call is made.
func NewClient(sock string, timeout time.Duration) *Client {
	return &Client{sock: sock, hc: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
	}}
}

// Do sends in (when not nil) as JSON and decodes the answer into out
// (when not nil). A call that reached no server wraps ErrRootOnly or
// ErrNoServer; an error status returns the server's message.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://unix"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var opErr *net.OpError
		switch {
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("%w: %s", ErrRootOnly, c.sock)
		case errors.As(err, &opErr) && opErr.Op == "dial":
			return fmt.Errorf("%w: %s: %v", ErrNoServer, c.sock, opErr.Err)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return errors.New(e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
