package telemetry

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCanonicalNames(t *testing.T) {
	tests := []struct {
		labels            map[string]string
		service, revision string
	}{
		{map[string]string{"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a",
			"service.istio.io/canonical-revision": "r1", "app.kubernetes.io/version": "k1", "version": "v1"}, "c", "r1"},
		{map[string]string{"app.kubernetes.io/name": "k", "app": "a", "app.kubernetes.io/version": "k1", "version": "v1"}, "k", "k1"},
		{map[string]string{"app": "a", "version": "v1"}, "a", "v1"},
		{nil, "frontend", "latest"},
	}
	for _, tt := range tests {
		p := PeerFromLabels("frontend", "web", "spiffe://td/ns/web/sa/default", tt.labels)
		if p.CanonicalService != tt.service || p.CanonicalRevision != tt.revision {
			t.Errorf("PeerFromLabels(%v) = %s/%s, want %s/%s", tt.labels, p.CanonicalService, p.CanonicalRevision, tt.service, tt.revision)
		}
	}
}

// The scrape carries the proxy's own cost beside the request metrics: what
// an operator (and bench/proxybench) reads to see CPU, memory and GC.
func TestScrapeHasProcessCost(t *testing.T) {
	rec := httptest.NewRecorder()
	New("test").Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats/prometheus", nil))
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes",
		"go_cpu_classes_gc_total_cpu_seconds_total", "go_goroutines"} {
		if !strings.Contains(rec.Body.String(), "\n"+name+" ") {
			t.Errorf("the scrape has no %s", name)
		}
	}
}

// TestSeriesAreCapped: callers choosing label values (their workload
// names, say) cannot make a reporter keep more label sets than the cap;
// what does not fit is counted, and known series keep counting.
func TestSeriesAreCapped(t *testing.T) {
	m := New("test")
	m.maxSeries = 5
	for i := range 8 {
		for range 2 {
			m.ObserveRequest(Request{Reporter: "destination", Source: Peer{Workload: fmt.Sprint("w", i)}, Protocol: "http", Code: 200})
		}
		m.Opened(Connection{Reporter: "source", Source: Peer{Workload: fmt.Sprint("w", i)}})(1, 1)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	out := rec.Body.String()
	if n := strings.Count(out, "istio_requests_total{"); n != 5 {
		t.Errorf("%d request series, want the cap of 5", n)
	}
	if n := strings.Count(out, "istio_tcp_connections_opened_total{"); n != 5 {
		t.Errorf("%d TCP series, want the cap of 5", n)
	}
	if !strings.Contains(out, "trellis_proxy_metric_series_overflow_total 9") {
		t.Errorf("overflow not counted as 6 requests + 3 connections:\n%s", grep(out, "overflow"))
	}
	if !strings.Contains(out, `source_workload="w0"`) || !strings.Contains(out, "} 2\n") {
		t.Errorf("known series stopped counting")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A request whose label set already has its series costs no allocation
// (go test -bench ObserveRequest -benchmem).
func BenchmarkObserveRequest(b *testing.B) {
	m := New("c")
	peer := Peer{Workload: "web", Namespace: "shop", Principal: "spiffe://cluster.local/ns/shop/sa/web", App: "web",
		Version: "v1", CanonicalService: "web", CanonicalRevision: "v1"}
	r := Request{Reporter: "source", Source: peer, Dest: peer, Service: "db.shop.svc.cluster.local", ServiceName: "db",
		ServiceNamespace: "shop", Protocol: "http", Code: 200, MutualTLS: true, Duration: time.Millisecond}
	m.ObserveRequest(r)
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRequest(r)
	}
}
