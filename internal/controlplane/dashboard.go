package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/dashboard"
	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
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
}

func (p *plane) newDashboard(traces *tracestore.Store) (*dashboardRun, error) {
	d := &dashboardRun{p: p, traces: traces}
	if p.cfg.PrometheusURL != "" {
		var err error
		d.src, err = servicegraph.Prometheus(p.cfg.PrometheusURL)
		return d, err
	}
	store := metricstore.New(metricstore.Config{Interval: p.cfg.ScrapeInterval})
	d.src, d.store = servicegraph.Local(store), store
	d.scrape = func(ctx context.Context) error {
		return store.Run(ctx, func() []metricstore.Target {
			ts := scrapeTargets(p.snap.Load(), "/stats/prometheus")
			for _, u := range p.cfg.NodeAgents {
				ts = append(ts, metricstore.Target{Key: "node-agent " + u, URL: u})
			}
			return ts
		})
	}
	return d, nil
}

// run serves the dashboard on ln and feeds it until ctx is done.
func (d *dashboardRun) run(ctx context.Context, ln net.Listener) error {
	cfg := dashboard.Config{Source: d.src, Traces: d.traces.Trace, Hosts: d.p.cfg.DashboardHosts,
		Requests:  func() []dashboard.Request { return dashboard.RequestsFromSpans(d.traces.Recent()) },
		Inventory: func() servicegraph.Inventory { return inventory(d.p.snap.Load()) }}
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
		out = append(out, metricstore.Target{Key: p.Key(), URL: proxyURL(p.IP, path)})
	}
	return out
}

func proxyURL(ip netip.Addr, path string) string {
	return fmt.Sprintf("http://%s%s", net.JoinHostPort(ip.String(), strconv.Itoa(ProxyMetricsPort)), path)
}

// inventory is what the graph shows even without traffic.
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
	return inv
}
