package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
	"github.com/trellis-mesh/trellis/internal/telemetry"
	"github.com/trellis-mesh/trellis/internal/tracestore"
)

// The API over a real proxy's metrics, scraped over HTTP as the control
// plane does, and spans as OTLP delivers them (the recent requests).
func TestAPI(t *testing.T) {
	proxy := telemetry.New("c")
	proxySrv := httptest.NewServer(proxy.Handler())
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
	traces := tracestore.New()
	traces.Add(spans(10))
	srv := httptest.NewServer(Handler(Config{Source: servicegraph.Local(store), Traces: traces.Trace, Targets: store.Targets,
		Requests: func() []Request { return RequestsFromSpans(traces.Recent()) }}))
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
	if len(reqs) != 10 || reqs[0].Path != "/health" || reqs[0].TraceID != "0000000000000000000000000000000a" || reqs[0].Source != "wl:shop/client" {
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

// spans are n server spans of alpha's sidecar, with the attributes
// telemetry.Tracing gives them, plus one client span of the caller (not
// listed: the destination's span counts).
func spans(n int) []*tracepb.ResourceSpans {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	span := func(i int, reporter string) *tracepb.Span {
		start := uint64(time.Now().UnixNano()) + uint64(i)
		return &tracepb.Span{TraceId: []byte{15: byte(i + 1)}, SpanId: []byte{7: byte(i + 1)}, Name: "alpha/health",
			StartTimeUnixNano: start, EndTimeUnixNano: start + 1e6, Attributes: []*commonpb.KeyValue{
				str("istio.reporter", reporter), str("istio.source_workload", "shop/client"), str("istio.destination_workload", "db/alpha"),
				str("istio.destination_service_name", "alpha"), str("istio.destination_service_namespace", "db"),
				str("istio.destination_principal", "spiffe://td/ns/db/sa/default"), str("istio.request_protocol", "http"),
				str("http.request.method", "GET"), str("url.path", "/health"), str("http.response.status_code", "200")}}
	}
	var ss []*tracepb.Span
	for i := range n {
		ss = append(ss, span(i, "destination"))
	}
	ss = append(ss, span(n, "source"))
	return []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: ss}}}}
}

// TestDNSRebindingRefused: a page of another site whose name was made to
// resolve to the dashboard sends that name as Host; the dashboard refuses
// it, and answers loopback names, IP addresses and --dashboard-host names.
func TestDNSRebindingRefused(t *testing.T) {
	srv := httptest.NewServer(Handler(Config{Source: servicegraph.Local(metricstore.New(metricstore.Config{})), Hosts: []string{"mesh.example.com"}}))
	defer srv.Close()
	for host, want := range map[string]int{
		"attacker.example:20001": http.StatusMisdirectedRequest, "evil": http.StatusMisdirectedRequest,
		"localhost:20001": 200, "127.0.0.1:20001": 200, "[::1]:20001": 200, "10.0.0.5": 200, "mesh.example.com": 200,
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/windows", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %s, want %d", host, resp.Status, want)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/api/windows", nil)
	req.Header.Set("Origin", "http://attacker.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-origin POST: %s, want 403", resp.Status)
	}
}
