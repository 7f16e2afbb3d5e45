package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/dashboard"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
	"github.com/trellis-mesh/trellis/internal/route"
	"github.com/trellis-mesh/trellis/internal/safehttp"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
	"github.com/trellis-mesh/trellis/internal/tracestore"
)

// dashboardRun is the dashboard and what feeds it: the traffic source
// (a Prometheus server, or a store scrape fills from the sidecars and
// node agents) and the traces, whose spans are also its recent requests.
type dashboardRun struct {
	p      *plane
	src    servicegraph.Source
	scrape func(context.Context) error // nil with Prometheus
	store  *metricstore.Store          // nil with Prometheus
	traces *tracestore.Store

	invMu   sync.Mutex
	invSnap *catalog.Snapshot // guarded by invMu: the snapshot inv is of
	inv     servicegraph.Inventory
}

// inventory is the inventory of the latest snapshot, made once per
// snapshot (its route splits compile every route), not per graph request.
func (d *dashboardRun) inventory() servicegraph.Inventory {
	s := d.p.snap.Load()
	d.invMu.Lock()
	defer d.invMu.Unlock()
	if s != d.invSnap || s == nil {
		d.inv, d.invSnap = inventory(s), s
	}
	return d.inv
}

func (p *plane) newDashboard(traces *tracestore.Store) (*dashboardRun, error) {
	d := &dashboardRun{p: p, traces: traces}
	if p.cfg.PrometheusURL != "" {
		var err error
		d.src, err = servicegraph.Prometheus(p.cfg.PrometheusURL)
		return d, err
	}
	cfg := metricstore.Config{Interval: p.cfg.ScrapeInterval}
	targets := func() []metricstore.Target {
		ts := scrapeTargets(p.snap.Load(), "/stats/prometheus")
		for _, u := range p.cfg.NodeAgents {
			ts = append(ts, metricstore.Target{Key: "node-agent " + u, URL: u})
		}
		return ts
	}
	if p.kube != nil {
		rt, err := p.kube.Transport()
		if err != nil {
			return nil, fmt.Errorf("dashboard: %w", err)
		}
		cfg.Transport = rt
		targets = func() []metricstore.Target {
			return podProxyTargets(p.snap.Load(), p.kube.Config.Host, p.cfg.Namespace)
		}
	}
	store := metricstore.New(cfg)
	d.src, d.store = servicegraph.Local(store), store
	d.scrape = func(ctx context.Context) error { return store.Run(ctx, targets) }
	return d, nil
}

// run serves the dashboard on ln and feeds it until ctx is done.
func (d *dashboardRun) run(ctx context.Context, ln net.Listener) error {
	cfg := dashboard.Config{Source: d.src, Traces: d.traces.Trace, Hosts: d.p.cfg.DashboardHosts,
		Requests:  func() []dashboard.Request { return dashboard.RequestsFromSpans(d.traces.Recent()) },
		Inventory: d.inventory}
	if d.store != nil {
		cfg.Targets = d.store.Targets
	}
	srv := safehttp.Server(dashboard.Handler(cfg))
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ignoreClosed(srv.Serve(ln)) })
	if d.scrape != nil {
		g.Go(func() error { return d.scrape(ctx) })
	}
	g.Go(func() error {
		<-ctx.Done()
		return srv.Close()
	})
	return g.Wait()
}

// ProxyMetricsPort is where every sidecar serves /stats/prometheus.
const ProxyMetricsPort = 15020

// scrapeTargets are path on the metrics port of every sidecar of
// snapshot s, by pod.
func scrapeTargets(s *catalog.Snapshot, path string) []metricstore.Target {
	if s == nil {
		return nil
	}
	out := make([]metricstore.Target, 0, len(s.Pods))
	for _, p := range s.Pods {
		if !p.Sidecar || !p.IP.IsValid() {
			continue
		}
		out = append(out, metricstore.Target{Key: p.Key(), URL: proxyURL(p.IP, path), Admit: reportsOwn(p)})
	}
	return out
}

// nodeAgentMetricsPort is where a node agent serves /metrics, on its
// node's address.
const nodeAgentMetricsPort = 15090

// podProxyTargets are, on Kubernetes, every sidecar's metrics and every
// ready node agent's (the pods labelled app=trellis-node in the control
// plane's namespace), reached through the API server's pod proxy at host.
// The API server, not this pod, then sends each scrape: a NetworkPolicy
// that isolates meshed pods leaves it alone where the API server runs on
// the pods' node (traffic from a node to its own pods is never
// filtered), and elsewhere needs one rule for it, rather than one for
// every control plane pod. Only these two fixed paths are asked for.
func podProxyTargets(s *catalog.Snapshot, host, namespace string) []metricstore.Target {
	if s == nil {
		return nil
	}
	var out []metricstore.Target
	via := func(p *catalog.RunningPod, port int, path string) metricstore.Target {
		return metricstore.Target{Key: p.Key(), URL: fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s:%d/proxy%s",
			strings.TrimSuffix(host, "/"), url.PathEscape(p.Pod.Namespace), url.PathEscape(p.Pod.Name), port, path)}
	}
	for _, p := range s.Pods {
		switch {
		case p.Sidecar && p.IP.IsValid():
			t := via(p, ProxyMetricsPort, "/stats/prometheus")
			t.Admit = reportsOwn(p)
			out = append(out, t)
		case p.Pod.Namespace == namespace && p.Pod.Labels["app"] == kube.NodeAgent && p.Ready:
			out = append(out, via(p, nodeAgentMetricsPort, "/metrics"))
		}
	}
	return out
}

// reportsOwn admits what the sidecar of pod p may report: the traffic it
// took part in, as its reporter label says (its workload is the source of
// what it reports as the source, the destination of what it reports as
// the destination), and series without a reporter (its process's own).
// Anything else is a pod claiming another's traffic: a fake sidecar, or a
// compromised one, drawing edges it was never on.
func reportsOwn(p *catalog.RunningPod) func(metricstore.Sample) bool {
	workload, ns := proxycfg.WorkloadName(p.Pod), p.Pod.Namespace
	return func(s metricstore.Sample) bool {
		switch s.Labels["reporter"] {
		case "":
			return true
		case "source":
			return s.Labels["source_workload"] == workload && s.Labels["source_workload_namespace"] == ns
		case "destination":
			return s.Labels["destination_workload"] == workload && s.Labels["destination_workload_namespace"] == ns
		}
		return false
	}
}

func proxyURL(ip netip.Addr, path string) string {
	return fmt.Sprintf("http://%s%s", net.JoinHostPort(ip.String(), strconv.Itoa(ProxyMetricsPort)), path)
}

// inventory is what the graph shows even without traffic, and where
// routes split requests.
func inventory(s *catalog.Snapshot) servicegraph.Inventory {
	var inv servicegraph.Inventory
	if s == nil {
		return inv
	}
	for _, svc := range s.Services {
		inv.Services = append(inv.Services, servicegraph.Ref{Namespace: svc.Namespace, Name: svc.Name})
	}
	seen := map[string]bool{}
	inv.Pods = make(map[string]string, len(s.Pods))
	for _, p := range s.Pods {
		w := servicegraph.Workload{Namespace: p.Pod.Namespace, Name: proxycfg.WorkloadName(p.Pod), Sidecar: p.Sidecar}
		inv.Pods[p.Key()] = w.Name
		if k := w.Namespace + "/" + w.Name; !seen[k] {
			seen[k] = true
			inv.Workloads = append(inv.Workloads, w)
		}
	}
	rs := route.Routes{HTTP: s.HTTPRoutes, GRPC: s.GRPCRoutes, VS: s.VirtualServices}
	exists := map[servicegraph.Ref]bool{}
	for _, r := range inv.Services {
		exists[r] = true
	}
	for _, sp := range route.Splits(rs, proxycfg.RouteConfig(s)) {
		if !exists[servicegraph.Ref{Namespace: sp.Backend.Namespace, Name: sp.Backend.Name}] {
			continue // a route names it, but a node for it would be made up
		}
		inv.Splits = append(inv.Splits, servicegraph.Split{
			Parent:  servicegraph.Ref{Namespace: sp.Parent.Namespace, Name: sp.Parent.Name},
			Backend: servicegraph.Ref{Namespace: sp.Backend.Namespace, Name: sp.Backend.Name},
			RouteShare: servicegraph.RouteShare{Route: fmt.Sprintf("%s %s/%s", sp.Route.Kind, sp.Route.Namespace, sp.Route.Name),
				Rule: sp.Rule, Share: sp.Share, Consumers: sp.Consumers, Invalid: sp.Invalid, Subset: sp.Backend.Subset}})
	}
	return inv
}
