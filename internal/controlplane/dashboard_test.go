package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/metricstore"
)

// TestSidecarsReportOnlyTheirOwnTraffic: a pod that serves metrics on the
// sidecar's port, as anyone who can run a pod can, claims requests of
// another workload. The dashboard's store keeps what it reports of its own
// traffic and refuses the rest, counting it; the graph then has no edge
// it was never on. A real scrape over a real socket.
func TestSidecarsReportOnlyTheirOwnTraffic(t *testing.T) {
	ip := netip.MustParseAddr("127.0.0.79")
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), fmt.Sprint(ProxyMetricsPort)))
	if err != nil {
		t.Skipf("loopback %s:%d is taken: %v", ip, ProxyMetricsPort, err)
	}
	line := func(reporter, src, srcNS, dst, dstNS string, n int) string {
		return fmt.Sprintf("istio_requests_total{reporter=%q,source_workload=%q,source_workload_namespace=%q,destination_workload=%q,destination_workload_namespace=%q,response_code=\"200\"} %d\n",
			reporter, src, srcNS, dst, dstNS, n)
	}
	body := "# TYPE istio_requests_total counter\n" +
		line("source", "web", "shop", "db", "data", 5) + // its own calls
		line("destination", "client", "shop", "web", "shop", 7) + // calls it served
		line("source", "payments", "shop", "db", "data", 1000) + // another workload's, forged
		line("destination", "web", "shop", "db", "data", 1000) + // the database's side, forged
		line("other", "web", "shop", "db", "data", 1000) + // no such reporter
		"# TYPE process_open_fds gauge\nprocess_open_fds 9\n"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) })}
	go srv.Serve(ln)
	defer srv.Close()

	pod := &catalog.RunningPod{Pod: &catalog.Pod{Owner: "web"}, IP: ip, Sidecar: true}
	pod.Pod.Name, pod.Pod.Namespace = "web-7d4b9c5f6-x2x9q", "shop"
	targets := scrapeTargets(&catalog.Snapshot{Pods: []*catalog.RunningPod{pod}}, "/stats/prometheus")
	store := metricstore.New(metricstore.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store.ScrapeOnce(ctx, &http.Client{Timeout: 5 * time.Second}, targets)
	store.ScrapeOnce(ctx, &http.Client{Timeout: 5 * time.Second}, targets)

	got := map[string]bool{}
	for _, g := range store.Increase(metricstore.Query{Metric: "istio_requests_total", Window: time.Minute,
		By: []string{"reporter", "source_workload", "destination_workload"}}) {
		got[strings.Join([]string{g.Labels["reporter"], g.Labels["source_workload"], g.Labels["destination_workload"]}, " ")] = true
	}
	for _, want := range []string{"source web db", "destination client web"} {
		if !got[want] {
			t.Errorf("the store lost the sidecar's own %q; it has %v", want, got)
		}
	}
	if len(got) != 2 {
		t.Errorf("the store kept %v, want only the sidecar's own traffic", got)
	}
	st := store.Targets()
	if len(st) != 1 || st[0].RefusedSamples != 3 || st[0].LastError != "" {
		t.Errorf("targets = %+v, want one with 3 refused samples", st)
	}
}

// The dashboard's inventory is made once per snapshot and follows the
// latest one: a Service added shows at once.
func TestDashboardInventoryFollowsTheSnapshot(t *testing.T) {
	p := &plane{}
	d := &dashboardRun{p: p}
	if inv := d.inventory(); len(inv.Services) != 0 {
		t.Fatalf("no snapshot: %d services, want none", len(inv.Services))
	}
	one := &catalog.Snapshot{Services: []*catalog.Service{{Meta: catalog.Meta{Namespace: "shop", Name: "web"}}}}
	p.snap.Store(one)
	first := d.inventory()
	if len(first.Services) != 1 {
		t.Fatalf("one Service: the inventory has %v", first.Services)
	}
	if again := d.inventory(); &again.Services[0] != &first.Services[0] {
		t.Error("the same snapshot's inventory was made again, want it kept")
	}
	p.snap.Store(&catalog.Snapshot{Services: append(one.Services, &catalog.Service{Meta: catalog.Meta{Namespace: "shop", Name: "db"}})})
	if inv := d.inventory(); len(inv.Services) != 2 {
		t.Errorf("a Service added: the inventory has %v, want both", inv.Services)
	}
}
