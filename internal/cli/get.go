package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

type getOptions struct {
	*options
	namespace     string
	allNamespaces bool
	output        string
	cluster       clusterFlags
}

func newGetCmd(o *options) *cobra.Command {
	g := &getOptions{options: o}
	cmd := &cobra.Command{
		Use:   "get pods|services|networkpolicies|namespaces|httproutes|grpcroutes|virtualservices|destinationrules [NAME] [--kubernetes]",
		Short: "List pods, services, network policies (with their denial counts), namespaces, routes and VirtualServices (with their status) or DestinationRules of the running mesh",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return g.run(cmd.Context(), args[0], name)
		},
	}
	cmd.Flags().StringVarP(&g.namespace, "namespace", "n", "default", "namespace to list")
	cmd.Flags().BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "list every namespace")
	cmd.Flags().StringVarP(&g.output, "output", "o", "", "output format: wide or json")
	g.cluster.register(cmd)
	return cmd
}

func (g *getOptions) run(ctx context.Context, resource, name string) error {
	if g.output != "" && g.output != "wide" && g.output != "json" {
		return fmt.Errorf("--output %q: use wide or json", g.output)
	}
	var c meshLister = g.client()
	if g.cluster.kubernetes {
		kc, err := g.cluster.connect()
		if err != nil {
			return err
		}
		l := &clusterLister{kc: kc, trellisNS: g.cluster.namespace, warn: terminalSafe(g.err)}
		if !g.allNamespaces {
			l.namespace = g.namespace
		}
		c = l
	}
	switch resource {
	case "pods", "pod", "po":
		pods, err := c.Pods(ctx)
		if err != nil {
			return err
		}
		return show(g, filter(pods, g, name, func(p localmesh.PodStatus) (string, string) { return p.Namespace, p.Name }), "pods", printPods)
	case "services", "service", "svc":
		svcs, err := c.Services(ctx)
		if err != nil {
			return err
		}
		return show(g, filter(svcs, g, name, func(s localmesh.ServiceStatus) (string, string) { return s.Namespace, s.Name }), "services", printServices)
	case "networkpolicies", "networkpolicy", "netpol":
		nps, err := c.NetworkPolicies(ctx)
		if err != nil {
			return err
		}
		return show(g, filter(nps, g, name, func(n localmesh.NetworkPolicyStatus) (string, string) { return n.Namespace, n.Name }), "networkpolicies", printNetworkPolicies)
	case "namespaces", "namespace", "ns":
		nss, err := c.Namespaces(ctx)
		if err != nil {
			return err
		}
		all := &getOptions{options: g.options, allNamespaces: true}
		return show(g, filter(nss, all, name, func(n localmesh.NamespaceStatus) (string, string) { return "", n.Name }), "namespaces", printNamespaces)
	case "httproutes", "httproute":
		return g.routes(ctx, c, catalog.KindHTTPRoute, name, printRoutes)
	case "grpcroutes", "grpcroute":
		return g.routes(ctx, c, catalog.KindGRPCRoute, name, printRoutes)
	case "virtualservices", "virtualservice", "vs":
		return g.routes(ctx, c, catalog.KindVirtualService, name, printVirtualServices)
	case "destinationrules", "destinationrule", "dr":
		return g.destinationRules(ctx, c, name)
	}
	return fmt.Errorf("unknown resource type %q: use pods, services, networkpolicies, namespaces, httproutes, grpcroutes, virtualservices or destinationrules", resource)
}

// routes shows the routes of one kind with their status, as table prints
// them.
func (g *getOptions) routes(ctx context.Context, c meshLister, kind catalog.Kind, name string,
	table func(io.Writer, []localmesh.RouteStatus, bool, bool)) error {
	all, err := c.Routes(ctx)
	if err != nil {
		return err
	}
	var routes []localmesh.RouteStatus
	for _, r := range all {
		if r.Kind == string(kind) {
			routes = append(routes, r)
		}
	}
	what := strings.ToLower(string(kind)) + "s"
	return show(g, filter(routes, g, name, func(r localmesh.RouteStatus) (string, string) { return r.Namespace, r.Name }), what, table)
}

func filter[T any](items []T, g *getOptions, name string, key func(T) (string, string)) []T {
	var out []T
	for _, it := range items {
		ns, n := key(it)
		if (g.allNamespaces || ns == g.namespace) && (name == "" || n == name) {
			out = append(out, it)
		}
	}
	return out
}

// show prints items as JSON, or as a table; an empty result says so, as
// kubectl does.
func show[T any](g *getOptions, items []T, what string, table func(io.Writer, []T, bool, bool)) error {
	if g.output == "json" {
		if items == nil {
			items = []T{}
		}
		enc := json.NewEncoder(g.out)
		enc.SetIndent("", "  ")
		return enc.Encode(items)
	}
	if len(items) == 0 {
		if g.allNamespaces || what == "namespaces" {
			fmt.Fprintf(g.err, "No %s found.\n", what)
		} else {
			fmt.Fprintf(g.err, "No %s found in %s namespace.\n", what, g.namespace)
		}
		return nil
	}
	tw := tabwriter.NewWriter(terminalSafe(g.out), 0, 8, 3, ' ', 0)
	table(tw, items, g.allNamespaces, g.output == "wide")
	return tw.Flush()
}

func row(w io.Writer, cols ...string) { fmt.Fprintln(w, strings.Join(cols, "\t")) }

func printPods(w io.Writer, pods []localmesh.PodStatus, allNS, wide bool) {
	head := []string{"NAME", "READY", "STATUS", "RESTARTS", "AGE"}
	where := "NETNS"
	if len(pods) > 0 && pods[0].Node != "" {
		where = "NODE"
	}
	if wide {
		head = append(head, "IP", where)
	}
	row(w, withNS(allNS, "NAMESPACE", head)...)
	for _, p := range pods {
		ready, restarts := 0, 0
		for _, c := range p.Containers {
			if c.Ready {
				ready++
			}
			restarts += c.Restarts
		}
		cols := []string{p.Name, fmt.Sprintf("%d/%d", ready, len(p.Containers)), p.Phase,
			fmt.Sprint(restarts), age(p.Created)}
		if wide {
			cols = append(cols, orNone(p.IP), p.Netns+p.Node)
		}
		row(w, withNS(allNS, p.Namespace, cols)...)
	}
}

func printServices(w io.Writer, svcs []localmesh.ServiceStatus, allNS, wide bool) {
	head := []string{"NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"}
	if wide {
		head = append(head, "SELECTOR", "ENDPOINTS")
	}
	row(w, withNS(allNS, "NAMESPACE", head)...)
	for _, s := range svcs {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		cols := []string{s.Name, "ClusterIP", orNone(s.ClusterIP), strings.Join(ports, ","), age(s.Created)}
		if wide {
			cols = append(cols, catalog.FormatLabels(s.Selector), orNone(strings.Join(s.Endpoints, ",")))
		}
		row(w, withNS(allNS, s.Namespace, cols)...)
	}
}

func printNetworkPolicies(w io.Writer, nps []localmesh.NetworkPolicyStatus, allNS, wide bool) {
	head := []string{"NAME", "POD-SELECTOR", "DENIED-IN", "DENIED-OUT", "AGE"}
	if wide {
		head = append(head, "POLICY-TYPES")
	}
	row(w, withNS(allNS, "NAMESPACE", head)...)
	for _, n := range nps {
		cols := []string{n.Name, n.PodSelector, fmt.Sprint(n.DeniedIngress), fmt.Sprint(n.DeniedEgress), age(n.Created)}
		if wide {
			cols = append(cols, strings.Join(n.Types, ","))
		}
		row(w, withNS(allNS, n.Namespace, cols)...)
	}
}

func printNamespaces(w io.Writer, nss []localmesh.NamespaceStatus, _, wide bool) {
	head := []string{"NAME", "STATUS", "AGE"}
	if wide {
		head = append(head, "LABELS")
	}
	row(w, head...)
	for _, n := range nss {
		cols := []string{n.Name, "Active", age(n.Created)}
		if wide {
			cols = append(cols, catalog.FormatLabels(n.Labels))
		}
		row(w, cols...)
	}
}

func withNS(allNS bool, ns string, cols []string) []string {
	if !allNS {
		return cols
	}
	return append([]string{ns}, cols...)
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// age formats how long ago t was, as kubectl does: 42s, 5m, 3h, 2d.
func age(t time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	d := time.Since(t)
	switch {
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
