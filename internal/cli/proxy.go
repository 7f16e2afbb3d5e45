package cli

import (
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/proxy"
)

// newProxyCmd runs the sidecar proxy: in one-host mode the runtime starts
// `trellis proxy` in each injected pod (trellis-proxy is the same code as a
// lean binary of its own).
func newProxyCmd() *cobra.Command {
	var cfg proxy.Config
	cmd := &cobra.Command{
		Use:    "proxy --config FILE --cert FILE --key FILE --bundle FILE",
		Short:  "Run the sidecar proxy (started by trellis up in injected pods)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return proxy.Run(ctx, cfg)
		},
	}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	cmd.Flags().AddGoFlagSet(fs)
	return cmd
}
