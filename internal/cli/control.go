package cli

import (
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
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
	f.StringVar(&cfg.DashboardAddr, "dashboard-addr", "127.0.0.1:20001", "address of the dashboard and its API")
	f.BoolVar(&cfg.NoDashboard, "no-dashboard", false, "serve no dashboard and scrape no sidecar")
	f.DurationVar(&cfg.ScrapeInterval, "scrape-interval", 5*time.Second, "how often the dashboard scrapes the sidecars' metrics")
	f.StringSliceVar(&cfg.NodeAgents, "node-agent-metrics", nil, "node agents' metrics URLs, scraped for the flows network policy denied (repeatable)")
	f.StringVar(&cfg.PrometheusURL, "prometheus", "", "read the dashboard's figures from this Prometheus server (http://host:9090) instead of scraping the sidecars")
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

// controlClient calls the control plane of the one-host mesh in stateDir.
func controlClient(stateDir string) *controlplane.Client {
	return controlplane.NewClient(controlStateDir(stateDir))
}

// controlStateDir is the control plane's directory inside a one-host
// mesh's state directory.
func controlStateDir(stateDir string) string { return filepath.Join(stateDir, "control") }
