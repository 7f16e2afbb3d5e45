package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
	"github.com/trellis-mesh/trellis/internal/telemetry"
	"github.com/trellis-mesh/trellis/internal/tracestore"
)

// The API over a real proxy's metrics and recent requests, scraped and
// polled over HTTP as the control plane does.
func TestAPI(t *testing.T) {
	proxy := telemetry.New("c")
	proxySrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats/recent-requests" {
			proxy.RecentHandler().ServeHTTP(w, r)
			return
		}
		proxy.Handler().ServeHTTP(w, r)
	}))
	defer proxySrv.Close()
	store := metricstore.New(metricstore.Config{})
	ctx := context.Background()
	store.ScrapeOnce(ctx, http.DefaultClient, []metricstore.Target{{Key: "db/alpha", URL: proxySrv.URL + "/stats/prometheus"}})
	src := telemetry.PeerFromLabels("client", "shop", "spiffe://td/ns/shop/sa/default", nil)
	dst := telemetry.PeerFromLabels("alpha", "db", "spiffe://td/ns/db/sa/default", nil)
	for i := range 10 {
		proxy.ObserveRequest(telemetry.Request{Reporter: "destination", Source: src, Dest: dst, Service: "alpha.db.svc.cluster.local",
			ServiceName: "alpha", ServiceNamespace: "db", Protocol: "http", Code: 200 + 300*(i%5/4), MutualTLS: true,
			Duration: time.Millisecond, Method: "GET", Path: "/health", TraceID: "abc"})
	}
	store.ScrapeOnce(ctx, http.DefaultClient, []metricstore.Target{{Key: "db/alpha", URL: proxySrv.URL + "/stats/prometheus"}})
	log := NewRequestLog()
	log.fetch(ctx, http.DefaultClient, metricstore.Target{Key: "db/alpha", URL: proxySrv.URL + "/stats/recent-requests"})

	traces := tracestore.New()
	srv := httptest.NewServer(Handler(Config{Source: servicegraph.Local(store), Requests: log.Latest, Traces: traces.Trace,
		Targets: store.Targets}))
	defer srv.Close()
	get := func(path string, wantCode int, out any) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != wantCode {
			t.Errorf("GET %s = %s, want %d", path, resp.Status, wantCode)
		}
		if out != nil {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Errorf("GET %s: %v", path, err)
			}
		}
	}

	var g servicegraph.Graph
	get("/api/graph?window=1m", 200, &g)
	edge := "wl:shop/client>svc:db/alpha:http"
	var found *servicegraph.Edge
	for _, e := range g.Edges {
		if e.ID == edge {
			found = e
		}
	}
	if found == nil || found.Requests != 10 || found.ErrorRate != 0.2 || found.MTLS != 1 {
		t.Errorf("graph edge %s = %+v, want 10 requests, 20%% errors, all mTLS", edge, found)
	}
	var errBody struct{ Error string }
	get("/api/graph?window=forever", 400, &errBody)
	if !strings.Contains(errBody.Error, "10s to 24h") {
		t.Errorf("bad window error %q, want the range", errBody.Error)
	}
	var points []servicegraph.Point
	get("/api/series?id="+edge+"&window=1m&points=5", 200, &points)
	if len(points) != 5 || points[4].RPS == 0 {
		t.Errorf("series = %+v, want 5 points ending with traffic", points)
	}
	get("/api/series?window=1m", 400, nil)
	var reqs []Request
	get("/api/requests?id="+edge, 200, &reqs)
	if len(reqs) != 10 || reqs[0].Path != "/health" || reqs[0].TraceID != "abc" || reqs[0].Source != "wl:shop/client" {
		t.Errorf("recent requests of %s = %d, first %+v; want the 10, with path and trace", edge, len(reqs), reqs)
	}
	get("/api/requests?id=wl:other/x>svc:db/alpha:http", 200, &reqs)
	if len(reqs) != 0 {
		t.Errorf("recent requests of another edge = %d, want none", len(reqs))
	}
	get("/api/traces/0123", 404, nil)
	var targets []metricstore.TargetStatus
	get("/api/targets", 200, &targets)
	if len(targets) != 1 || targets[0].Key != "db/alpha" || targets[0].LastError != "" {
		t.Errorf("targets = %+v, want db/alpha scraped fine", targets)
	}
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("GET / = %s %s, want the page", resp.Status, resp.Header.Get("Content-Type"))
	}
}
