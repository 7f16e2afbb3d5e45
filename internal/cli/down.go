package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/localmesh"
)

func newDownCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the mesh and remove everything it created on the host",
		Long: `Stop the running mesh and remove every network namespace, link, route, hosts
file and nftables table it created. Works also after 'trellis up' was killed:
the state directory's ledger records everything before it is created.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDown(cmd.Context(), o) },
	}
}

func runDown(ctx context.Context, o *options) error {
	if err := requireRoot("trellis down"); err != nil {
		return err
	}
	err := o.client().Shutdown(ctx)
	stopped := err == nil
	switch {
	case stopped:
		if err := waitStopped(ctx, o.stateDir, time.Minute); err != nil {
			return err
		}
		fmt.Fprintln(o.out, "mesh stopped")
	case errors.Is(err, localmesh.ErrNotRunning):
		if localmesh.Running(o.stateDir) {
			return fmt.Errorf("a mesh holds %s but does not answer on its socket; stop its process, then run `trellis down` again", o.stateDir)
		}
	default:
		return err
	}
	// Whatever the mesh did not remove (it was killed, say) is in the ledger.
	removed, err := localmesh.Cleanup(o.stateDir)
	switch {
	case len(removed) > 0:
		fmt.Fprintf(o.out, "removed %d leftover resources of a mesh that did not stop cleanly\n", len(removed))
	case err == nil && !stopped:
		fmt.Fprintf(o.out, "no mesh is running with state directory %s; nothing to remove\n", o.stateDir)
	}
	if err != nil {
		return fmt.Errorf("some resources could not be removed (run `trellis down` again): %w", err)
	}
	return nil
}

// waitStopped waits until no process holds the state directory's lock.
func waitStopped(ctx context.Context, stateDir string, limit time.Duration) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for localmesh.Running(stateDir) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("the mesh did not stop within %s; its log is in %s", limit, stateDir)
		case <-tick.C:
		}
	}
	return nil
}
