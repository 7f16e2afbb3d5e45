package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
)

func newLogsCmd(o *options) *cobra.Command {
	p := &podOptions{options: o}
	var follow bool
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "logs [-n NS] POD [-c CONTAINER] [-f] [--kubernetes]",
		Short: "Print a container's logs (stdout and stderr, across restarts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cluster.kubernetes {
				return clusterLog(cmd.Context(), o.out, &cluster, p.namespace, args[0], p.container, follow)
			}
			_, c, err := p.find(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printLog(cmd.Context(), o.out, c.Log, follow)
		},
	}
	p.flags(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cluster.register(cmd)
	return cmd
}

// clusterLog copies a cluster pod's container log to w through the API
// server, as kubectl logs does (the pod's default container when
// container is empty).
func clusterLog(ctx context.Context, w io.Writer, cluster *clusterFlags, namespace, pod, container string, follow bool) error {
	kc, err := cluster.connect()
	if err != nil {
		return err
	}
	rc, err := kc.Client.CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{Container: container, Follow: follow}).Stream(ctx)
	if err != nil {
		return fmt.Errorf("logs of %s/%s: %w", namespace, pod, err)
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of %s/%s: %w", namespace, pod, err)
	}
	return nil
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
