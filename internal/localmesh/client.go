package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// ErrNotRunning is returned by Client calls when no mesh serves the state
// directory.
var ErrNotRunning = errors.New("no mesh is running")

// Client talks to a running mesh through its state directory's socket.
type Client struct {
	stateDir string
	api      *unixapi.Client
}

// NewClient returns a client for the mesh using stateDir. It does not
// connect until a call is made.
func NewClient(stateDir string) *Client {
	return &Client{stateDir: stateDir, api: unixapi.NewClient(SocketPath(stateDir), 60*time.Second)}
}

// SocketPath is the API socket of the mesh using stateDir (the node agent
// reads its policy there: nodeagent.OneHostSource).
func SocketPath(stateDir string) string { return filepath.Join(stateDir, socketFile) }

// Status returns the mesh's status; ErrNotRunning when none answers.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Pods lists the pods.
func (c *Client) Pods(ctx context.Context) ([]PodStatus, error) {
	var out []PodStatus
	return out, c.do(ctx, http.MethodGet, "/v1/pods", nil, &out)
}

// Services lists the services.
func (c *Client) Services(ctx context.Context) ([]ServiceStatus, error) {
	var out []ServiceStatus
	return out, c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
}

// Namespaces lists the namespaces.
func (c *Client) Namespaces(ctx context.Context) ([]NamespaceStatus, error) {
	var out []NamespaceStatus
	return out, c.do(ctx, http.MethodGet, "/v1/namespaces", nil, &out)
}

// NetworkPolicies lists the network policies with their denial counters.
func (c *Client) NetworkPolicies(ctx context.Context) ([]NetworkPolicyStatus, error) {
	var out []NetworkPolicyStatus
	return out, c.do(ctx, http.MethodGet, "/v1/networkpolicies", nil, &out)
}

// Routes lists the HTTPRoutes, GRPCRoutes and VirtualServices with their
// status.
func (c *Client) Routes(ctx context.Context) ([]RouteStatus, error) {
	var out []RouteStatus
	return out, c.do(ctx, http.MethodGet, "/v1/routes", nil, &out)
}

// DestinationRules lists the DestinationRules.
func (c *Client) DestinationRules(ctx context.Context) ([]DestinationRuleStatus, error) {
	var out []DestinationRuleStatus
	return out, c.do(ctx, http.MethodGet, "/v1/destinationrules", nil, &out)
}

// Apply sends manifests to apply.
func (c *Client) Apply(ctx context.Context, srcs []manifest.Source) (ApplyResult, error) {
	var out ApplyResult
	return out, c.do(ctx, http.MethodPost, "/v1/apply", ManifestRequest{Sources: srcs}, &out)
}

// Delete sends manifests whose objects to delete.
func (c *Client) Delete(ctx context.Context, srcs []manifest.Source) (ApplyResult, error) {
	var out ApplyResult
	return out, c.do(ctx, http.MethodPost, "/v1/delete", ManifestRequest{Sources: srcs}, &out)
}

// SetControlPlane starts or stops the mesh's control plane.
func (c *Client) SetControlPlane(ctx context.Context, running bool) (Status, error) {
	var out Status
	return out, c.do(ctx, http.MethodPost, "/v1/control-plane", ControlPlaneRequest{Running: running}, &out)
}

// Shutdown asks the mesh to stop; it returns before the mesh has stopped.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/shutdown", struct{}{}, nil)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	err := c.api.Do(ctx, method, path, in, out)
	switch {
	case errors.Is(err, unixapi.ErrRootOnly):
		return fmt.Errorf("the mesh API in %s is root-only: run this command with sudo", c.stateDir)
	case errors.Is(err, unixapi.ErrNoServer):
		return fmt.Errorf("%w with state directory %s: start one with `trellis up -f FILE`", ErrNotRunning, c.stateDir)
	}
	return err
}
