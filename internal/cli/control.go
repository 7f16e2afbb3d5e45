package cli

import (
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/controlplane"
)

// newControlCmd runs the control plane. `trellis up` starts it for a
// one-host mesh; cmd/trellis-control runs the same control plane as its
// own binary.
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
	fs := flag.NewFlagSet("control", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	cmd.Flags().AddGoFlagSet(fs)
	return cmd
}

// controlClient calls the control plane of the one-host mesh in stateDir.
func controlClient(stateDir string) *controlplane.Client {
	return controlplane.NewClient(controlStateDir(stateDir))
}

// controlStateDir is the control plane's directory inside a one-host
// mesh's state directory.
func controlStateDir(stateDir string) string { return filepath.Join(stateDir, "control") }
