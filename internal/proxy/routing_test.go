package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	routing "github.com/trellis-mesh/trellis/internal/route"
)

// routesFrom reads HTTPRoutes, GRPCRoutes and VirtualServices from YAML
// as a user writes them, into the config's form.
func routesFrom(t *testing.T, manifest string) []*meshpb.Route {
	t.Helper()
	var rs routing.Routes
	for _, doc := range strings.Split(manifest, "\n---\n") {
		var o struct {
			Kind     string                           `json:"kind"`
			Metadata struct{ Name, Namespace string } `json:"metadata"`
			Spec     json.RawMessage                  `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		meta := catalog.Meta{Name: o.Metadata.Name, Namespace: o.Metadata.Namespace}
		var err error
		switch o.Kind {
		case "GRPCRoute":
			r := &catalog.GRPCRoute{Meta: meta}
			err = json.Unmarshal(o.Spec, &r.Spec)
			rs.GRPC = append(rs.GRPC, r)
		case "VirtualService":
			r := &catalog.VirtualService{Meta: meta}
			err = json.Unmarshal(o.Spec, &r.Spec)
			rs.VS = append(rs.VS, r)
		default:
			r := &catalog.HTTPRoute{Meta: meta}
			err = json.Unmarshal(o.Spec, &r.Spec)
			rs.HTTP = append(rs.HTTP, r)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	prs, err := routing.ToProto(rs)
	if err != nil {
		t.Fatal(err)
	}
	return prs
}

// newRoutedMesh is two apps answering their names, alpha-0 behind the
// Service alpha-v1, alpha-1 behind alpha-v2 and both behind alpha-both,
// and the Service alpha (the app's destination, endpoints of its own
// none) with routes.
func newRoutedMesh(t *testing.T, routes string) *testMesh {
	t.Helper()
	return newRoutedMeshApp(t, routes, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-App", name)
			fmt.Fprint(w, name)
			if v := r.Header.Get("X-Route"); v != "" {
				fmt.Fprint(w, " x-route="+v)
			}
		})
	})
}

// newRoutedMeshApp is newRoutedMesh with the apps' handler.
func newRoutedMeshApp(t *testing.T, routes string, app func(name string) http.Handler) *testMesh {
	t.Helper()
	m := newTestMeshApp(t, 2, app)
	m.outbound.Update(routedConfig(t, m, routes))
	return m
}

// routedConfig is newRoutedMeshApp's config of m: alpha with routes, and
// its backends alpha-v1, alpha-v2 and alpha-both.
func routedConfig(t *testing.T, m *testMesh, routes string) *meshpb.ProxyConfig {
	t.Helper()
	svc := func(name, vip string, eps ...*meshpb.Endpoint) *meshpb.Service {
		return dbService(name, vip, meshpb.Protocol_PROTOCOL_HTTP, eps...)
	}
	return &meshpb.ProxyConfig{Version: "routes",
		Workload: &meshpb.Workload{Namespace: "web", Name: "frontend", Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{svc("alpha", vip.Addr().String()),
			svc("alpha-v1", "10.98.0.2", m.endpoints[0]), svc("alpha-v2", "10.98.0.3", m.endpoints[1]),
			svc("alpha-both", "10.98.0.4", m.endpoints...)},
		Routes: routesFrom(t, routes)}
}

const canaryRoutes = `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 80}]
  rules:
  - backendRefs:
    - {name: alpha-v1, port: 80, weight: 90}
    - {name: alpha-v2, port: 80, weight: 10}
  - matches: [{headers: [{name: x-canary, value: always}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served-by, value: canary}], remove: [x-app]}}
    backendRefs: [{name: alpha-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
---
metadata: {name: api-only, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha-v1}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: alpha-v1, port: 80}]
`

// A 90/10 split holds over 2000 requests on one client connection,
// HTTP/1.1 and h2c alike (each backend within ±3 points); a header match
// outranks the catch-all rule; a redirect and a request no rule matches
// are answered by the proxy.
func TestRoutesSplitMatchAndAnswer(t *testing.T) {
	m := newRoutedMesh(t, canaryRoutes)
	h1 := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 30 * time.Second}
	t.Cleanup(h1.CloseIdleConnections)
	h2c, conns := oneH2CConnection(t)
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", h1}, {"h2c", h2c}} {
		t.Run(c.name, func(t *testing.T) {
			const n = 2000
			got := spread(t, c.client, "http://"+m.appAddr+"/", n, 1)
			if v1, v2 := got["alpha-0"], got["alpha-1"]; v1+v2 != n || v1 < n*87/100 || v1 > n*93/100 {
				t.Errorf("alpha-v1 served %d and alpha-v2 %d of %d, want 90 %% ± 3 points (all: %v)", v1, v2, n, got)
			}
			req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/", nil)
			req.Header.Set("X-Canary", "always")
			for range 20 {
				checkCanary(t, c.client, req)
			}
		})
	}
	// Expect: 100-continue hands the connection to net/http, which
	// routes alike.
	req, _ := http.NewRequest("POST", "http://"+m.appAddr+"/", strings.NewReader("body"))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("X-Canary", "always")
	checkCanary(t, &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}, Timeout: 30 * time.Second}, req)
	if n := conns.Load(); n != 1 {
		t.Errorf("the h2c client opened %d connections, want 1", n)
	}
	// The routes of alpha-v1 (called by its own address) match /api only.
	v1 := "http://" + serve(t, func(c net.Conn) { m.outServer.HandleConn(c, netip.MustParseAddrPort("10.98.0.2:80")) })
	for _, c := range []*http.Client{h1, h2c} {
		req, _ := http.NewRequest("GET", v1+"/api/x", nil)
		if body := get(t, c, req, 200); body != "alpha-0" {
			t.Errorf("alpha-v1's /api/x went to %q, want alpha-0", body)
		}
		req, _ = http.NewRequest("GET", v1+"/other", nil)
		if body := get(t, c, req, 404); !strings.Contains(body, "no rule") {
			t.Errorf("alpha-v1's /other answered %q, want the proxy's 404 saying no rule matches", body)
		}
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ = http.NewRequest("GET", "http://"+m.appAddr+"/old?x=1", nil)
	req.Host = "alpha.db.svc.cluster.local"
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "http://alpha.db.svc.cluster.local/new?x=1" {
		t.Errorf("GET /old = %d Location %q, want 301 to /new?x=1", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// checkCanary sends req, a request with x-canary: always, and checks that
// the canary rule served it: alpha-v2 got the rule's request header, and
// the response has the rule's changes.
func checkCanary(t *testing.T, c *http.Client, req *http.Request) {
	t.Helper()
	resp, body := do(t, c, req)
	if body != "alpha-1 x-route=canary" || resp.Header.Get("X-Served-By") != "canary" || resp.Header.Get("X-App") != "" {
		t.Fatalf("x-canary: always got %d %q with x-served-by %q and x-app %q, want alpha-1 (alpha-v2) with the rule's "+
			"request header, x-served-by canary and no x-app", resp.StatusCode, body, resp.Header.Get("X-Served-By"), resp.Header.Get("X-App"))
	}
}

// do sends req with c and reads the whole answer.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// dbService is a service of namespace db at vip with one port, 80, named
// for its protocol.
func dbService(name, vip string, protocol meshpb.Protocol, eps ...*meshpb.Endpoint) *meshpb.Service {
	port := "http"
	if protocol == meshpb.Protocol_PROTOCOL_GRPC {
		port = "grpc"
	}
	return &meshpb.Service{Namespace: "db", Name: name, Vip: vip,
		Ports: []*meshpb.ServicePort{{Port: 80, Name: port, Protocol: protocol, Endpoints: eps}}}
}

// grpcBehind serves srv as an app behind in, m's sidecar, until the
// test ends, and returns the endpoint it is.
func grpcBehind(t *testing.T, m *testMesh, in *Inbound, srv *grpc.Server) *meshpb.Endpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	appPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	addr := netip.MustParseAddrPort(serve(t, func(c net.Conn) { in.HandleConn(c, appPort) }))
	return &meshpb.Endpoint{Address: addr.Addr().String(), Port: uint32(addr.Port()), Identity: m.serverID.String()}
}

// get sends req with c and returns the body, failing unless the status
// is want.
func get(t *testing.T, c *http.Client, req *http.Request, want int) string {
	t.Helper()
	resp, body := do(t, c, req)
	if resp.StatusCode != want {
		t.Fatalf("%s %s = %d %q (flags %q), want %d", req.Method, req.URL, resp.StatusCode, body, resp.Header.Get(flagsHeader), want)
	}
	return body
}

// A GRPCRoute splits one connection's calls of a method by weight; a call
// no rule matches is refused by the proxy with UNIMPLEMENTED.
func TestGRPCRoutes(t *testing.T) {
	m := newTestMesh(t, 2)
	var eps []*meshpb.Endpoint
	for i, in := range m.inbounds {
		name := fmt.Sprintf("grpc-%d", i)
		srv := grpc.NewServer(grpc.MaxConcurrentStreams(100), grpc.UnaryInterceptor(
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				_ = grpc.SetHeader(ctx, metadata.Pairs("x-replica", name))
				return h(ctx, req)
			}))
		healthpb.RegisterHealthServer(srv, health.NewServer())
		eps = append(eps, grpcBehind(t, m, in, srv))
	}
	svc := func(name, vip string, eps ...*meshpb.Endpoint) *meshpb.Service {
		return dbService(name, vip, meshpb.Protocol_PROTOCOL_GRPC, eps...)
	}
	m.outbound.Update(&meshpb.ProxyConfig{Version: "grpc-routes",
		Workload: &meshpb.Workload{Namespace: "web", Name: "frontend", Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{svc("alpha", vip.Addr().String()), svc("alpha-v1", "10.98.0.2", eps[0]), svc("alpha-v2", "10.98.0.3", eps[1])},
		Routes: routesFrom(t, `
kind: GRPCRoute
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
    backendRefs: [{name: alpha-v1, port: 80, weight: 70}, {name: alpha-v2, port: 80, weight: 30}]
`)})
	conn, err := grpc.NewClient(m.appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 1000
	got := map[string]int{}
	for range n {
		var md metadata.MD
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md)); err != nil {
			t.Fatal(err)
		}
		got[strings.Join(md.Get("x-replica"), ",")]++
	}
	if v1 := got["grpc-0"]; v1+got["grpc-1"] != n || v1 < n*65/100 || v1 > n*75/100 {
		t.Errorf("Check calls per backend = %v of %d, want alpha-v1 70 %% ± 5 points", got, n)
	}
	err = conn.Invoke(ctx, "/grpc.health.v1.Health/List", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "no rule") {
		t.Errorf("a call no rule matches = %v, want the proxy's UNIMPLEMENTED saying no rule matches", err)
	}
}

// A route's header changes, applied in one pass, do what they would one
// after another.
func TestEditFields(t *testing.T) {
	in := []h2.Field{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}, {Name: "c", Value: "3"}}
	op := func(a routing.HeaderAction, name, value string) routing.HeaderOp {
		return routing.HeaderOp{Action: a, Name: name, Value: value}
	}
	for _, c := range []struct {
		name string
		ops  routing.HeaderOps
		want string
	}{
		{"none", nil, "a=1 b=2 c=3"},
		{"set replaces", routing.HeaderOps{op(routing.HeaderSet, "B", "x")}, "a=1 c=3 b=x"},
		{"add appends", routing.HeaderOps{op(routing.HeaderAdd, "A", "y")}, "a=1 b=2 c=3 a=y"},
		{"remove drops", routing.HeaderOps{op(routing.HeaderRemove, "C", "")}, "a=1 b=2"},
		{"add, then set", routing.HeaderOps{op(routing.HeaderAdd, "A", "y"), op(routing.HeaderSet, "A", "z")}, "b=2 c=3 a=z"},
		{"set, then add", routing.HeaderOps{op(routing.HeaderSet, "A", "z"), op(routing.HeaderAdd, "A", "y")}, "b=2 c=3 a=z a=y"},
		{"add, then remove", routing.HeaderOps{op(routing.HeaderAdd, "D", "y"), op(routing.HeaderRemove, "D", "")}, "a=1 b=2 c=3"},
	} {
		got := editFields(c.ops).apply(slices.Clone(in))
		var s []string
		for _, f := range got {
			s = append(s, f.Name+"="+f.Value)
		}
		if strings.Join(s, " ") != c.want {
			t.Errorf("%s: %v = %q, want %q", c.name, c.ops, strings.Join(s, " "), c.want)
		}
	}
}
