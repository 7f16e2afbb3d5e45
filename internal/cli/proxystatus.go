package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/push"
)

// newProxyStatusCmd shows every proxy's sync state, as istioctl
// proxy-status does.
func newProxyStatusCmd(o *options) *cobra.Command {
	var output string
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "proxy-status [--kubernetes]",
		Short: "Show every proxy: connected, config acked, certificate expiry, NACKs",
		Long: `Show every proxy: connected, config acked, certificate expiry, NACKs.

With --kubernetes it asks every control plane replica of the cluster
(through the API server) and shows each proxy as the replica it streams
from sees it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st []push.ProxyStatus
			var err error
			if cluster.kubernetes {
				st, err = clusterProxyStatuses(cmd.Context(), &cluster)
			} else {
				st, err = controlClient(o.stateDir).Proxies(cmd.Context())
			}
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(o.out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			tw := tabwriter.NewWriter(terminalSafe(o.out), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tPOD\tCONNECTED\tCONFIG\tVERSION\tLAST ACK\tCERT EXPIRES\tNACK")
			for _, p := range st {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Pod, p.Connected, syncState(p),
					p.AckedVersion, ago(p.LastAck), until(p.CertNotAfter), p.NACK)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	cluster.register(cmd)
	return cmd
}

// clusterProxyStatuses are the proxies of a cluster's mesh, by namespace
// and pod.
func clusterProxyStatuses(ctx context.Context, cluster *clusterFlags) ([]push.ProxyStatus, error) {
	kc, err := cluster.connect()
	if err != nil {
		return nil, err
	}
	byPod, err := kube.ProxyStatuses(ctx, kc, cluster.namespace)
	if err != nil {
		return nil, fmt.Errorf("%w (is Trellis installed? `trellis check`)", err)
	}
	st := make([]push.ProxyStatus, 0, len(byPod))
	for _, k := range slices.Sorted(maps.Keys(byPod)) {
		st = append(st, byPod[k])
	}
	return st, nil
}

// syncState is SYNCED when the proxy acked what the control plane would
// send it now (config and trust bundle), STALE otherwise.
func syncState(p push.ProxyStatus) string {
	switch {
	case p.AckedVersion == "":
		return "NOT SENT"
	case p.AckedVersion == p.WantVersion && p.Bundle == p.WantBundle:
		return "SYNCED"
	}
	return "STALE"
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func until(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return "in " + time.Until(t).Round(time.Second).String()
}
