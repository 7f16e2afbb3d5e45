package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

// defaultDashboard is where the control plane serves the dashboard.
const defaultDashboard = "127.0.0.1:20001"

func dashboardURL(addr string) string { return "http://" + addr + "/" }

// fetchGraph reads /api/graph from the dashboard at addr.
func fetchGraph(ctx context.Context, addr string, window time.Duration, namespaces []string) (*servicegraph.Graph, error) {
	q := url.Values{"window": {window.String()}}
	if len(namespaces) > 0 {
		q.Set("namespaces", strings.Join(namespaces, ","))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dashboardURL(addr)+"api/graph?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the dashboard at %s does not answer (is a mesh running? start one with `trellis up` or `trellis demo --keep`): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(body, &e)
		return nil, fmt.Errorf("dashboard: %s: %s", resp.Status, e.Error)
	}
	var g servicegraph.Graph
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	return &g, nil
}

func newGraphCmd(o *options) *cobra.Command {
	var (
		addr, output string
		window       time.Duration
		namespaces   []string
	)
	cmd := &cobra.Command{
		Use:   "graph [--window 1m] [-n NS,...] [-o json]",
		Short: "Print the service graph: who calls whom, per protocol, with rate, success, p95 and mTLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g, err := fetchGraph(cmd.Context(), addr, window, namespaces)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(o.out)
				enc.SetIndent("", "  ")
				return enc.Encode(g)
			}
			return printGraph(o.out, g)
		},
	}
	cmd.Flags().StringVar(&addr, "dashboard-addr", defaultDashboard, "the control plane's dashboard address")
	cmd.Flags().DurationVar(&window, "window", time.Minute, "traffic over this long, up to now")
	cmd.Flags().StringSliceVarP(&namespaces, "namespace", "n", nil, "only these namespaces (and the nodes they talk to)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	return cmd
}

// printGraph prints one line per edge from a caller: to a service (the
// workloads behind it follow on the service's own edges) or straight to a
// workload.
func printGraph(w io.Writer, g *servicegraph.Graph) error {
	nodes := map[string]*servicegraph.Node{}
	for _, n := range g.Nodes {
		nodes[n.ID] = n
	}
	tw := tabwriter.NewWriter(terminalSafe(w), 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FROM\tTO\tPROTOCOL\tRPS\tSUCCESS\tP95\tMTLS\t(last %s)\n", g.Window)
	lines := 0
	for _, e := range g.Edges {
		from, to := nodes[e.Source], nodes[e.Target]
		if from == nil || to == nil || from.Kind == servicegraph.KindService {
			continue
		}
		lines++
		if e.Denied {
			fmt.Fprintf(tw, "%s\t%s\t%s\tDENIED %g\t-\t-\t-\t%s\n", nodeName(from), nodeName(to), e.Protocol, e.Requests, e.Reason)
			continue
		}
		p95 := "-"
		if e.P95 != nil {
			p95 = fmt.Sprintf("%.1fms", *e.P95)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.1f%%\t%s\t%.0f%%\t\n", nodeName(from), nodeName(to), e.Protocol, e.RPS,
			100*(1-e.ErrorRate), p95, 100*e.MTLS)
	}
	if lines == 0 {
		fmt.Fprintf(tw, "(no traffic in the last %s)\n", g.Window)
	}
	return tw.Flush()
}

func nodeName(n *servicegraph.Node) string {
	switch n.Kind {
	case servicegraph.KindService:
		return n.Name + "." + n.Namespace + " (service)"
	case servicegraph.KindUnknown:
		return "unknown (outside the mesh)"
	}
	return n.Namespace + "/" + n.Name
}

func newDashboardCmd(o *options) *cobra.Command {
	var addr string
	var open bool
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Open the dashboard: the live service graph, charts and recent requests",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := fetchGraph(cmd.Context(), addr, time.Minute, nil); err != nil {
				return err
			}
			u := dashboardURL(addr)
			fmt.Fprintf(o.out, "dashboard: %s\n", u)
			if open && (os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "") {
				if xdg, err := exec.LookPath("xdg-open"); err == nil {
					return exec.Command(xdg, u).Start()
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "dashboard-addr", defaultDashboard, "the control plane's dashboard address")
	cmd.Flags().BoolVar(&open, "browser", true, "open it in a browser when there is a display")
	return cmd
}
