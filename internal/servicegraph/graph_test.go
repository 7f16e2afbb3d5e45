package servicegraph

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

func peer(ns, wl string) telemetry.Peer {
	return telemetry.PeerFromLabels(wl, ns, "spiffe://cluster.local/ns/"+ns+"/sa/default", map[string]string{"app": wl})
}

// The demo's traffic, recorded by the real telemetry code of two proxies
// (alpha's and zero's), exposed over HTTP, scraped into the store and
// drawn: the edges Kiali would draw, with the figures behind them.
func TestBuildFromScrapedProxies(t *testing.T) {
	alpha, zero := telemetry.New("c"), telemetry.New("c")
	allow, alphaP, zeroP := peer("client-allow", "client"), peer("db", "demo-graph-alpha"), peer("db", "demo-graph-zero")
	req := func(m *telemetry.Metrics, r telemetry.Request, n int) {
		for range n {
			m.ObserveRequest(r)
		}
	}
	alphaSvc := func(r telemetry.Request) telemetry.Request {
		r.Service, r.ServiceName, r.ServiceNamespace = "demo-graph-alpha.db.svc.cluster.local", "demo-graph-alpha", "db"
		r.Dest = alphaP
		return r
	}
	store := metricstore.New(metricstore.Config{})
	srvA, srvZ := httptest.NewServer(alpha.Handler()), httptest.NewServer(zero.Handler())
	defer srvA.Close()
	defer srvZ.Close()
	targets := []metricstore.Target{{Key: "db/alpha", URL: srvA.URL}, {Key: "db/zero", URL: srvZ.URL}}
	ctx := context.Background()
	store.ScrapeOnce(ctx, http.DefaultClient, targets) // the baseline: series born later count from zero

	// 90 HTTP and 30 gRPC calls from the meshed client (3 gRPC failing),
	// 30 HTTP calls from outside the mesh, 20 writes alpha -> zero
	// (reported by both ends; counted once), 5 plaintext connections
	// refused at a STRICT port.
	req(alpha, alphaSvc(telemetry.Request{Reporter: "destination", Source: allow, Protocol: "http", Code: 200, MutualTLS: true, Duration: 2 * time.Millisecond}), 90)
	req(alpha, alphaSvc(telemetry.Request{Reporter: "destination", Source: allow, Protocol: "grpc", Code: 200, GRPCStatus: "0", MutualTLS: true, Duration: 30 * time.Millisecond}), 27)
	req(alpha, alphaSvc(telemetry.Request{Reporter: "destination", Source: allow, Protocol: "grpc", Code: 200, GRPCStatus: "14", MutualTLS: true, Duration: 30 * time.Millisecond}), 3)
	req(alpha, alphaSvc(telemetry.Request{Reporter: "destination", Source: telemetry.Unknown, Protocol: "http", Code: 200, Duration: 2 * time.Millisecond}), 30)
	// 10 gRPC calls from another meshed client, every one refused by an
	// AuthorizationPolicy.
	req(alpha, alphaSvc(telemetry.Request{Reporter: "destination", Source: peer("client-other", "client"), Protocol: "grpc", Code: 200, GRPCStatus: "7",
		Flags: "RBAC", MutualTLS: true, Duration: time.Millisecond}), 10)
	toZero := telemetry.Request{Source: alphaP, Dest: zeroP, Service: "demo-graph-zero.db.svc.cluster.local", ServiceName: "demo-graph-zero",
		ServiceNamespace: "db", Protocol: "grpc", Code: 200, GRPCStatus: "0", MutualTLS: true, Duration: time.Millisecond}
	toZero.Reporter = "source"
	req(alpha, toZero, 20)
	toZero.Reporter = "destination"
	req(zero, toZero, 20)
	for range 5 {
		zero.Opened(telemetry.Connection{Reporter: "destination", Source: telemetry.Unknown, Dest: zeroP, Flags: "NR"})(0, 0)
	}
	time.Sleep(10 * time.Millisecond)
	store.ScrapeOnce(ctx, http.DefaultClient, targets)

	g, err := Build(ctx, Local(store), Options{Window: time.Minute,
		Inventory: Inventory{Workloads: []Workload{{Namespace: "client-deny", Name: "client"}},
			Splits: []Split{{Parent: Ref{"db", "demo-graph-alpha"}, Backend: Ref{"db", "demo-graph-alpha-v2"},
				RouteShare: RouteShare{Route: "VirtualService client-allow/alpha-v2", Share: 1, Consumers: "client-allow"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	edges := map[string]*Edge{}
	for _, e := range g.Edges {
		edges[e.ID] = e
	}
	want := []struct {
		id             string
		requests, errs float64
		mtls           float64
		denied         bool
		authzDenied    float64
	}{
		{"wl:client-allow/client>svc:db/demo-graph-alpha:http", 90, 0, 1, false, 0},
		{"wl:client-allow/client>svc:db/demo-graph-alpha:grpc", 30, 0.1, 1, false, 0},
		{"unknown>svc:db/demo-graph-alpha:http", 30, 0, 0, false, 0},
		{"svc:db/demo-graph-alpha>wl:db/demo-graph-alpha:http", 120, 0, 0.75, false, 0},
		{"svc:db/demo-graph-alpha>wl:db/demo-graph-alpha:grpc", 40, 0.075, 1, false, 10},
		{"wl:client-other/client>svc:db/demo-graph-alpha:grpc", 10, 0, 1, true, 10},
		{"wl:db/demo-graph-alpha>svc:db/demo-graph-zero:grpc", 20, 0, 1, false, 0},
		{"svc:db/demo-graph-zero>wl:db/demo-graph-zero:grpc", 20, 0, 1, false, 0},
		{"unknown>wl:db/demo-graph-zero:tcp", 5, 0, 0, true, 0},
		{"svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route", 0, 0, 0, false, 0},
	}
	for _, w := range want {
		e := edges[w.id]
		if e == nil {
			t.Errorf("no edge %s; have %v", w.id, keys(edges))
			continue
		}
		if e.Requests != w.requests || e.ErrorRate != w.errs || e.MTLS != w.mtls || e.Denied != w.denied || e.AuthzDenied != w.authzDenied {
			t.Errorf("edge %s = %g requests, %g errors, %g mTLS, denied %v, %g by authorization; want %g, %g, %g, %v, %g",
				w.id, e.Requests, e.ErrorRate, e.MTLS, e.Denied, e.AuthzDenied, w.requests, w.errs, w.mtls, w.denied, w.authzDenied)
		}
	}
	// A route's split is drawn without traffic of its own.
	if e := edges["svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route"]; e != nil && (len(e.Routes) != 1 || e.Routes[0].Share != 1 || e.RPS != 0) {
		t.Errorf("the route edge = %+v, want VirtualService client-allow/alpha-v2's 100%% and no traffic", e)
	}
	if e := edges["wl:client-other/client>svc:db/demo-graph-alpha:grpc"]; e != nil && !strings.Contains(e.Reason, "AuthorizationPolicy") {
		t.Errorf("the refused edge's reason %q does not name authorization", e.Reason)
	}
	if len(g.Edges) != len(want) {
		t.Errorf("%d edges %v, want %d", len(g.Edges), keys(edges), len(want))
	}
	if e := edges[want[0].id]; e.P95 == nil || *e.P95 <= 1 || *e.P95 > 5 {
		t.Errorf("HTTP p95 = %v, want in the 1..5 ms bucket (2 ms requests)", deref(e.P95))
	}
	if e := edges[want[1].id]; e.P50 == nil || *e.P50 <= 25 || *e.P50 > 50 {
		t.Errorf("gRPC p50 = %v, want in the 25..50 ms bucket", deref(e.P50))
	}
	nodes := map[string]*Node{}
	for _, n := range g.Nodes {
		nodes[n.ID] = n
	}
	for id, health := range map[string]string{
		"wl:client-allow/client": Degraded, "svc:db/demo-graph-zero": Healthy, "wl:client-deny/client": Idle,
		"unknown": Healthy, "wl:db/demo-graph-zero": Healthy,
	} {
		if n := nodes[id]; n == nil || n.Health != health {
			t.Errorf("node %s = %+v, want health %s", id, n, health)
		}
	}
	if n := nodes["wl:client-allow/client"]; n == nil || !n.Sidecar {
		t.Errorf("the meshed client is not marked as having a sidecar: %+v", n)
	}
	if n := nodes["wl:client-deny/client"]; n == nil || n.Sidecar {
		t.Errorf("the client outside the mesh is marked as having a sidecar: %+v", n)
	}

	only, err := Build(ctx, Local(store), Options{Window: time.Minute, Namespaces: []string{"client-allow"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(only.Edges) != 2 || len(only.Nodes) != 2 {
		t.Errorf("graph of client-allow: %d edges, %d nodes; want its 2 edges and the 2 nodes they join", len(only.Edges), len(only.Nodes))
	}
	if _, err := Build(ctx, Local(store), Options{}); err == nil {
		t.Error("Build with no window succeeded, want an error")
	}
}

func keys(m map[string]*Edge) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestPromQL(t *testing.T) {
	got := PromQL(Query{Metric: "istio_requests_total", Match: map[string]string{"reporter": "destination", "a": "b"},
		By: []string{"x", "y"}, Window: 90 * time.Second})
	want := `sum by (x, y) (increase(istio_requests_total{a="b", reporter="destination"}[90s]))`
	if got != want {
		t.Errorf("PromQL = %s, want %s", got, want)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// A split among a Service's own subsets stays on the Service's node (no
// edge to itself), one share per subset; shares to subsets of another
// Service are on the route edge, each subset apart.
func TestSubsetSplits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alpha, other := Ref{"db", "alpha"}, Ref{"db", "beta"}
	share := func(subset string, s float64) RouteShare {
		return RouteShare{Route: "VirtualService db/alpha", Share: s, Subset: subset}
	}
	g, err := Build(ctx, Local(metricstore.New(metricstore.Config{})), Options{Window: time.Minute, Inventory: Inventory{
		Services: []Ref{alpha, other},
		Splits: []Split{{Parent: alpha, Backend: alpha, RouteShare: share("v1", 0.5)}, {Parent: alpha, Backend: alpha, RouteShare: share("v2", 0.5)},
			{Parent: alpha, Backend: other, RouteShare: share("v1", 0.25)}, {Parent: alpha, Backend: other, RouteShare: share("v2", 0.75)}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range g.Edges {
		if e.Source == e.Target {
			t.Errorf("edge %s goes from a node to itself", e.ID)
		}
		if e.ID == "svc:db/alpha>svc:db/beta:route" && (len(e.Routes) != 2 || e.Routes[0].Subset != "v1" || e.Routes[1].Subset != "v2") {
			t.Errorf("the route edge to beta = %+v, want its two subsets' shares apart", e.Routes)
		}
	}
	for _, n := range g.Nodes {
		if n.ID == "svc:db/alpha" && (len(n.Routes) != 2 || n.Routes[0].Subset != "v1" || n.Routes[1].Subset != "v2") {
			t.Errorf("alpha's node routes = %+v, want v1's and v2's shares", n.Routes)
		}
	}
}
