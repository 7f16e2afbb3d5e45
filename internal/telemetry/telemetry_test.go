package telemetry

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
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

// The dashboard's recent requests: the newest RecentSize, oldest first,
// from a given Seq on; paths bounded, no query string kept.
func TestRecentRequests(t *testing.T) {
	m := New("c")
	for i := range RecentSize + 5 {
		m.ObserveRequest(Request{Reporter: "destination", Source: Unknown, Protocol: "http", Code: 200,
			Method: "GET", Path: "/p/" + strconv.Itoa(i)})
	}
	m.ObserveRequest(Request{Reporter: "destination", Protocol: "http", Code: 200, Path: "/" + strings.Repeat("x", 1000)})
	get := func(q string) []Recent {
		rec := httptest.NewRecorder()
		m.RecentHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats/recent-requests"+q, nil))
		var page RecentPage
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			t.Fatalf("GET %s: %v (%s)", q, err, rec.Body)
		}
		if page.Next != RecentSize+6 {
			t.Errorf("GET %s: next %d, want %d", q, page.Next, RecentSize+6)
		}
		return page.Requests
	}
	all := get("")
	if len(all) != RecentSize || all[0].Seq != 6 || all[0].Path != "/p/6" || all[len(all)-1].Seq != RecentSize+5 {
		t.Fatalf("recent requests: %d, first seq %d path %q; want the last %d (seq 6..%d)", len(all), all[0].Seq, all[0].Path, RecentSize, RecentSize+5)
	}
	if p := all[len(all)-1].Path; len(p) > maxPath+len("…") {
		t.Errorf("a 1001-byte path is remembered with %d bytes, want at most %d", len(p), maxPath)
	}
	if got := get("?after=" + strconv.Itoa(RecentSize+4)); len(got) != 2 || got[0].Source != "unknown" {
		t.Errorf("after %d: %+v, want the last 2", RecentSize+4, got)
	}
	rec := httptest.NewRecorder()
	m.RecentHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/?after=x", nil))
	if rec.Code != 400 {
		t.Errorf("after=x: %d, want 400", rec.Code)
	}
}
