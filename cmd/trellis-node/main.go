// Command trellis-node is the node agent: it enforces the mesh's
// NetworkPolicies with nftables. In one-host mode `trellis up` runs the same
// agent as `trellis node-agent`. See internal/nodeagent.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/internal/cli"
)

func main() {
	stateDir := os.Getenv("TRELLIS_STATE_DIR")
	if stateDir == "" {
		stateDir = cli.DefaultStateDir
	}
	if err := cli.NodeAgentCommand(stateDir).ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
