package telemetry

import (
	"net/http/httptest"
	"strings"
	"testing"
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
