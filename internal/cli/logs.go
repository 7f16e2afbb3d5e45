package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
)

func newLogsCmd(o *options) *cobra.Command {
	p := &podOptions{options: o}
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-n NS] POD [-c CONTAINER] [-f]",
		Short: "Print a container's logs (stdout and stderr, across restarts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, c, err := p.find(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printLog(cmd.Context(), o.out, c.Log, follow)
		},
	}
	p.flags(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	return cmd
}

// printLog copies the log file to w and, with follow, keeps copying what is
// appended until ctx is done or the file is removed with its pod.
func printLog(ctx context.Context, w io.Writer, path string, follow bool) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil // the container has not written anything yet
	}
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return fmt.Errorf("read log: %w", err)
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := os.Stat(path); err != nil {
			return nil // the pod is gone
		}
	}
}
