// Command trellis-control is the control plane: the certificate authority,
// discovery and the config stream to every proxy. In one-host mode
// `trellis up` runs the same code as `trellis control`. See
// internal/controlplane.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/internal/cli"
)

func main() {
	if err := cli.ControlCommand().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
