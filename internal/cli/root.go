// Package cli implements the trellis command line: one file per command,
// kubectl-like verbs over the one-host runtime (internal/localmesh). It is
// imported only by cmd/trellis, which calls New and executes the result.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/localmesh"
)

// DefaultStateDir is where a mesh keeps its lock, ledger, socket and logs.
const DefaultStateDir = "/var/lib/trellis"

// options are the flags every command shares.
type options struct {
	stateDir string
	out, err io.Writer
}

func (o *options) client() *localmesh.Client { return localmesh.NewClient(o.stateDir) }

// New returns the root command. stateDir is the default for --state-dir.
func New(stateDir string) *cobra.Command {
	o := &options{stateDir: stateDir, out: os.Stdout, err: os.Stderr}
	root := &cobra.Command{
		Use:           "trellis",
		Short:         "Trellis: a light service mesh; runs a whole mesh on one host",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&o.stateDir, "state-dir", stateDir, "directory holding the mesh's lock, ledger, API socket and logs")
	root.AddCommand(
		newUpCmd(o), newDownCmd(o), newApplyCmd(o), newDeleteCmd(o),
		newGetCmd(o), newExecCmd(o), newLogsCmd(o), newExampleCmd(o), newNodeAgentCmd(o), newProxyCmd(), newControlCmd(),
		newProxyStatusCmd(o), newProxyConfigCmd(o), newCACmd(o), newControlPlaneCmd(o),
		newDemoCmd(o), newGraphCmd(o), newDashboardCmd(o), newImagesCmd(o),
		newInstallCmd(o), newUninstallCmd(o), newInjectCmd(o), newCheckCmd(o), newRestartInjectedCmd(o), newExplainCmd(o), newAuthzCmd(o),
	)
	return root
}

// Main runs the CLI with args and returns the process exit code.
func Main(ctx context.Context, args []string) int {
	stateDir := os.Getenv("TRELLIS_STATE_DIR")
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	root := New(stateDir)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code) // the command said what went wrong itself
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	return 1
}

// exitCode is the exit status of a command run inside a pod, which
// `trellis exec` exits with; it has said what went wrong itself.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// requireRoot fails with a message naming what needs root.
func requireRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root: it creates network namespaces, veth links, routes and nftables rules (CAP_NET_ADMIN, CAP_SYS_ADMIN); run it with sudo", what)
	}
	return nil
}
