package cli

import (
	"flag"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/nodeagent"
)

// newNodeAgentCmd runs the node agent against a one-host mesh. `trellis up`
// starts it; cmd/trellis-node runs the same agent as its own binary.
func newNodeAgentCmd(o *options) *cobra.Command {
	var cfg nodeagent.Config
	cmd := &cobra.Command{
		Use:    "node-agent",
		Short:  "Enforce the mesh's NetworkPolicies with nftables (started by trellis up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot("the node agent"); err != nil {
				return err
			}
			stateDir, err := filepath.Abs(o.stateDir)
			if err != nil {
				return err
			}
			cfg.Source = nodeagent.OneHostSource(localmesh.SocketPath(stateDir))
			agent, err := nodeagent.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx)
		},
	}
	fs := flag.NewFlagSet("node-agent", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	cmd.Flags().AddGoFlagSet(fs)
	return cmd
}
