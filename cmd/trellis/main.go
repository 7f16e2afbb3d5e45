// Command trellis is the Trellis CLI; it also runs a whole mesh on one host
// (`trellis up`). See internal/cli.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

func main() {
	// The runtime starts container processes as
	// `trellis __nsexec NETNS -- CMD...`: enter the pod and exec, before
	// anything else starts.
	if len(os.Args) > 3 && os.Args[1] == localmesh.NSExecCommand && os.Args[3] == "--" {
		err := localmesh.ExecInPod(os.Args[2], os.Args[4:], os.Environ())
		fmt.Fprintln(os.Stderr, "trellis:", err)
		os.Exit(127)
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:]))
}
