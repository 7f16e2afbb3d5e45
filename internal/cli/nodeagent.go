package cli

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/nodeagent"
)

// newNodeAgentCmd runs the node agent against a one-host mesh. `trellis up`
// starts it; cmd/trellis-node runs the same command as its own binary.
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
			cfg.Source = meshSource{localmesh.NewClient(stateDir)}
			agent, err := nodeagent.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&cfg.Table, "table", "trellis-netpol", "nftables table (family ip) the agent owns")
	cmd.Flags().StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:15090", "address for /metrics; empty disables")
	cmd.Flags().StringVar(&cfg.GuardTable, "guard-table", "", "bridge table guarding the pods' links, whose drop counters /metrics shows (trellis up sets it)")
	cmd.Flags().DurationVar(&cfg.Resync, "resync", 500*time.Millisecond, "how often the kernel is checked against the applied rules")
	return cmd
}

// NodeAgentCommand is the node agent as a root command, for cmd/trellis-node.
func NodeAgentCommand(stateDir string) *cobra.Command {
	o := &options{stateDir: stateDir, out: os.Stdout, err: os.Stderr}
	cmd := newNodeAgentCmd(o)
	cmd.Use, cmd.Hidden = "trellis-node", false
	cmd.SilenceUsage = true
	cmd.PersistentFlags().StringVar(&o.stateDir, "state-dir", stateDir, "state directory of the one-host mesh to enforce")
	return cmd
}

// meshSource feeds the agent from a one-host mesh's API.
type meshSource struct{ c *localmesh.Client }

func (s meshSource) Next(ctx context.Context, version uint64, wait time.Duration) (nodeagent.Snapshot, error) {
	snap, err := s.c.Policy(ctx, version, wait)
	return nodeagent.Snapshot{Version: snap.Version, Input: snap.Input}, err
}
