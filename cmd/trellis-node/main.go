// Command trellis-node is the node agent: it enforces the mesh's
// NetworkPolicies with nftables. In one-host mode `trellis up` runs the same
// agent as `trellis node-agent`. See internal/nodeagent.
//
//	trellis-node [--mesh-api SOCKET] [--table NAME] [--metrics-addr ADDR] [--resync D] [--guard-table NAME]
//
// It links the agent and its policy compiler only (a test enforces it).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/nodeagent"
)

func main() {
	var cfg nodeagent.Config
	fs := flag.NewFlagSet("trellis-node", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	api := fs.String("mesh-api", nodeagent.DefaultMeshAPI, "API socket of the one-host mesh whose policies to enforce")
	_ = fs.Parse(os.Args[1:])
	if err := run(cfg, *api); err != nil {
		fmt.Fprintln(os.Stderr, "trellis-node:", err)
		os.Exit(1)
	}
}

func run(cfg nodeagent.Config, api string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it writes nftables rules (CAP_NET_ADMIN)")
	}
	cfg.Source = nodeagent.OneHostSource(api)
	agent, err := nodeagent.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx)
}
