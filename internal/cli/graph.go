package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/install"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

// defaultDashboard is where the control plane serves the dashboard.
const defaultDashboard = "127.0.0.1:20001"

func dashboardURL(addr string) string { return "http://" + addr + "/" }

// clusterFlags aim a command at the control plane of a Kubernetes cluster
// instead of the one-host mesh.
type clusterFlags struct {
	kubernetes bool
	cluster    kubeclient.Target
	namespace  string
}

func (f *clusterFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.kubernetes, "kubernetes", false, "the mesh of the Kubernetes cluster of the kubeconfig, not this host's")
	targetFlags(cmd, &f.cluster, "with --kubernetes: ")
	cmd.Flags().StringVar(&f.namespace, "control-plane-namespace", install.Defaults().Namespace, "with --kubernetes: where Trellis is installed")
}

// targetFlags registers --kubeconfig and --context, as kubectl has them;
// when prefixes their help ("with --kubernetes: ").
func targetFlags(cmd *cobra.Command, t *kubeclient.Target, when string) {
	cmd.Flags().StringVar(&t.Kubeconfig, "kubeconfig", "", when+"the cluster's kubeconfig (default $KUBECONFIG, else ~/.kube/config)")
	cmd.Flags().StringVar(&t.Context, "context", "", when+"the kubeconfig context to use (default its current context)")
}

func (f *clusterFlags) connect() (*kubeclient.Clients, error) {
	return kubeclient.Connect(f.cluster, "trellis")
}

// clusterGraph reads /api/graph from the dashboard of the control plane
// installed in namespace ns, through the API server's service proxy.
func clusterGraph(ctx context.Context, kc *kubeclient.Clients, ns string, window time.Duration, namespaces []string) (*servicegraph.Graph, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	body, err := kc.Client.CoreV1().Services(ns).ProxyGet("http", install.ControlPlane, strconv.Itoa(install.DashboardPort), "api/graph",
		map[string]string{"window": window.String(), "namespaces": strings.Join(namespaces, ",")}).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("the dashboard (service %s/%s; is Trellis installed? `trellis check`): %w", ns, install.ControlPlane, err)
	}
	var g servicegraph.Graph
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	return &g, nil
}

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
		cluster      clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "graph [--window 1m] [-n NS,...] [-o json] [--kubernetes]",
		Short: "Print the service graph: who calls whom, per protocol, with rate, success, p95 and mTLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var g *servicegraph.Graph
			var err error
			if cluster.kubernetes {
				var kc *kubeclient.Clients
				if kc, err = cluster.connect(); err == nil {
					g, err = clusterGraph(cmd.Context(), kc, cluster.namespace, window, namespaces)
				}
			} else {
				g, err = fetchGraph(cmd.Context(), addr, window, namespaces)
			}
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
	cluster.register(cmd)
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
	for _, n := range g.Nodes {
		if len(n.Routes) > 0 {
			fmt.Fprintf(tw, "%s\t(its subsets)\t%s\t-\t-\t-\t-\t%s\n", nodeName(n), servicegraph.ProtocolRoute, routeShares(n.Routes))
		}
	}
	for _, e := range g.Edges {
		from, to := nodes[e.Source], nodes[e.Target]
		if from != nil && to != nil && e.Protocol == servicegraph.ProtocolRoute {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t%s\n", nodeName(from), nodeName(to), e.Protocol, routeShares(e.Routes))
			continue
		}
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
		note := ""
		if e.AuthzDenied > 0 {
			note = fmt.Sprintf("%g denied by AuthorizationPolicy", e.AuthzDenied)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.1f%%\t%s\t%.0f%%\t%s\n", nodeName(from), nodeName(to), e.Protocol, e.RPS,
			100*(1-e.ErrorRate), p95, 100*e.MTLS, note)
	}
	if lines == 0 {
		fmt.Fprintf(tw, "(no traffic in the last %s)\n", g.Window)
	}
	return tw.Flush()
}

// routeShares says what routes send along a route edge, or among a
// service's subsets: "100% to subset v2 for client-allow (VirtualService
// client-allow/alpha-v2 rule 0)".
func routeShares(rs []servicegraph.RouteShare) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.0f%%", 100*r.Share)
		if r.Subset != "" {
			parts[i] += " to subset " + r.Subset
		}
		if r.Consumers != "" {
			parts[i] += " for " + r.Consumers
		}
		if r.Invalid {
			parts[i] += " (invalid: 500)"
		}
		parts[i] += fmt.Sprintf(" (%s rule %d)", r.Route, r.Rule)
	}
	return strings.Join(parts, ", ")
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
	var cluster clusterFlags
	var port int
	cmd := &cobra.Command{
		Use:   "dashboard [--kubernetes [--port 20001]]",
		Short: "Open the dashboard: the live service graph, charts and recent requests",
		Long: `Print (and, with a display, open) the dashboard's URL.

With --kubernetes it forwards 127.0.0.1:PORT to a ready control plane pod of
the cluster, as kubectl port-forward does, and keeps forwarding until
interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cluster.kubernetes {
				return forwardDashboard(cmd.Context(), o, &cluster, port, open)
			}
			if _, err := fetchGraph(cmd.Context(), addr, time.Minute, nil); err != nil {
				return err
			}
			showDashboard(o, dashboardURL(addr), open)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "dashboard-addr", defaultDashboard, "the control plane's dashboard address")
	cmd.Flags().BoolVar(&open, "browser", true, "open it in a browser when there is a display")
	cmd.Flags().IntVar(&port, "port", install.DashboardPort, "with --kubernetes: the local port to forward (on 127.0.0.1)")
	cluster.register(cmd)
	return cmd
}

// showDashboard prints the dashboard's URL and, with a display, opens it.
func showDashboard(o *options, u string, open bool) {
	fmt.Fprintf(o.out, "dashboard: %s\n", u)
	if open && (os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "") {
		if xdg, err := exec.LookPath("xdg-open"); err == nil {
			_ = exec.Command(xdg, u).Start()
		}
	}
}

// forwardDashboard port-forwards to a ready control plane pod until ctx
// is done (Ctrl-C).
func forwardDashboard(ctx context.Context, o *options, cluster *clusterFlags, port int, open bool) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("--port %d is not a port", port)
	}
	kc, err := cluster.connect()
	if err != nil {
		return err
	}
	pods, err := kc.Client.CoreV1().Pods(cluster.namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + install.ControlPlane})
	if err != nil {
		return fmt.Errorf("the control plane's pods: %w", err)
	}
	pod := ""
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
			return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		}) {
			pod = p.Name
			break
		}
	}
	if pod == "" {
		return fmt.Errorf("no ready control plane pod in namespace %s (is Trellis installed? `trellis check`)", cluster.namespace)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- kube.PortForward(ctx, kc, cluster.namespace, pod, port, install.DashboardPort, ready, o.err)
	}()
	select {
	case err := <-done:
		return fmt.Errorf("port-forward to %s/%s: %w", cluster.namespace, pod, err)
	case <-ready:
	}
	showDashboard(o, dashboardURL(net.JoinHostPort("127.0.0.1", strconv.Itoa(port))), open)
	fmt.Fprintf(o.out, "forwarding to pod %s/%s; Ctrl-C stops\n", cluster.namespace, pod)
	return <-done
}
