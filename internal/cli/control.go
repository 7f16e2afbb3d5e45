package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/controlplane"
)

// newControlCmd runs the control plane. `trellis up` starts it for a
// one-host mesh; cmd/trellis-control runs the same command as its own
// binary.
func newControlCmd() *cobra.Command {
	var cfg controlplane.Config
	cmd := &cobra.Command{
		Use:    "control --state-dir DIR --registry FILE",
		Short:  "Run the control plane: CA, discovery and config push (started by trellis up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return controlplane.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "control-state-dir", "", "directory of the CA, spent tokens and the admin socket (required)")
	f.StringVar(&cfg.Registry, "registry", "", "registry file the mesh is discovered from (required)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", ":15012", "address of the CA and config-stream gRPC service (TLS)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:15014", "address of /metrics")
	f.StringVar(&cfg.CACert, "ca-cert", "", "an operator's root or intermediate certificate (PEM), with its chain")
	f.StringVar(&cfg.CAKey, "ca-key", "", "the key of --ca-cert (PEM, PKCS#8)")
	f.DurationVar(&cfg.SVIDTTL, "svid-ttl", 24*time.Hour, "lifetime of workload certificates (renewed at half life)")
	f.DurationVar(&cfg.Debounce, "debounce", 100*time.Millisecond, "how long a burst of changes may settle before it is pushed")
	return cmd
}

// ControlCommand is the control plane as a root command, for
// cmd/trellis-control.
func ControlCommand() *cobra.Command {
	cmd := newControlCmd()
	cmd.Use, cmd.Hidden, cmd.SilenceUsage, cmd.SilenceErrors = "trellis-control", false, true, true
	return cmd
}

// controlStateDir is the control plane's directory inside a one-host
// mesh's state directory.
func controlStateDir(stateDir string) string { return filepath.Join(stateDir, "control") }

// adminClient talks to a control plane's admin socket.
type adminClient struct {
	sock string
	hc   *http.Client
}

func newAdminClient(stateDir string) *adminClient {
	sock := controlplane.SocketPath(controlStateDir(stateDir))
	return &adminClient{sock: sock, hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

func (a *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(data))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://control"+path, body)
	if err != nil {
		return err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("the control plane's socket %s is root-only: run this command with sudo", a.sock)
		}
		return fmt.Errorf("no control plane answers on %s (is the mesh up? `trellis up -f FILE`): %w", a.sock, err)
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
	return json.NewDecoder(resp.Body).Decode(out)
}
