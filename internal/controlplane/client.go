package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/trellis-mesh/trellis/internal/push"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// Client calls a control plane's admin API (see admin.go) through the
// socket in its state directory: what the CLI's proxy-status and ca
// rotate use.
type Client struct {
	sock string
	api  *unixapi.Client
}

// NewClient returns a client for the control plane keeping stateDir. It
// does not connect until a call is made.
func NewClient(stateDir string) *Client {
	sock := SocketPath(stateDir)
	return &Client{sock: sock, api: unixapi.NewClient(sock, 30*time.Second)}
}

// Proxies lists every proxy the control plane knows.
func (c *Client) Proxies(ctx context.Context) ([]push.ProxyStatus, error) {
	var out []push.ProxyStatus
	return out, c.do(ctx, http.MethodGet, "/v1/proxies", nil, &out)
}

// CA describes the authority and where root rotation stands.
func (c *Client) CA(ctx context.Context) (CAStatus, error) {
	var out CAStatus
	return out, c.do(ctx, http.MethodGet, "/v1/ca", nil, &out)
}

// Rotate takes one step of root rotation: prepare, activate or finish.
func (c *Client) Rotate(ctx context.Context, step string) (CAStatus, error) {
	var out CAStatus
	return out, c.do(ctx, http.MethodPost, "/v1/ca/rotate", RotateRequest{Step: step}, &out)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	err := c.api.Do(ctx, method, path, in, out)
	switch {
	case errors.Is(err, unixapi.ErrRootOnly):
		return fmt.Errorf("the control plane's socket %s is root-only: run this command with sudo", c.sock)
	case errors.Is(err, unixapi.ErrNoServer):
		return fmt.Errorf("no control plane answers on %s (is the mesh up? `trellis up -f FILE`)", c.sock)
	}
	return err
}
