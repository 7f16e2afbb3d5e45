package route

import (
	"testing"
)

// Each kind of match, as the spec defines it: one rule sending to
// graph-v2, and whether a request reaches it (else 404).
func TestHTTPMatches(t *testing.T) {
	const v2 = "r[0] db/graph-v2:8080"
	for _, tc := range []struct {
		name, matches string
		req           *Request
		want          string
	}{
		{"no matches match everything", ``, get("/anything"), v2},
		{"exact", `[{path: {type: Exact, value: /a}}]`, get("/a"), v2},
		{"exact is not a prefix", `[{path: {type: Exact, value: /a}}]`, get("/a/"), "Not Found"},
		{"exact is case-sensitive", `[{path: {type: Exact, value: /a}}]`, get("/A"), "Not Found"},
		{"prefix by element", `[{path: {type: PathPrefix, value: /abc}}]`, get("/abc/def"), v2},
		{"prefix matches itself", `[{path: {value: /abc}}]`, get("/abc"), v2},
		{"prefix not within an element", `[{path: {type: PathPrefix, value: /abc}}]`, get("/abcd"), "Not Found"},
		{"prefix trailing slash ignored", `[{path: {type: PathPrefix, value: /abc/}}]`, get("/abc"), v2},
		{"prefix ignores the query", `[{path: {value: /abc}}]`, get("/abc?x=1"), v2},
		{"regex is whole path", `[{path: {type: RegularExpression, value: "/v[0-9]+"}}]`, get("/v12"), v2},
		{"regex is anchored", `[{path: {type: RegularExpression, value: "/v[0-9]+"}}]`, get("/v12/x"), "Not Found"},
		{"method", `[{method: GET}]`, get("/"), v2},
		{"other method", `[{method: POST}]`, get("/"), "Not Found"},
		{"header names ignore case", `[{headers: [{name: X-Canary, value: "yes"}]}]`, get("/", "x-canary", "yes"), v2},
		{"header values do not", `[{headers: [{name: x-canary, value: "yes"}]}]`, get("/", "X-Canary", "YES"), "Not Found"},
		{"missing header", `[{headers: [{name: x-canary, value: "yes"}]}]`, get("/"), "Not Found"},
		{"repeated header joined", `[{headers: [{name: x-a, value: "1,2"}]}]`, get("/", "x-a", "1", "x-a", "2"), v2},
		{"repeated header, one value", `[{headers: [{name: x-a, value: "1"}]}]`, get("/", "x-a", "1", "x-a", "2"), "Not Found"},
		{"header regex", `[{headers: [{type: RegularExpression, name: x-env, value: "prod|stage"}]}]`, get("/", "x-env", "stage"), v2},
		{"header regex on repeated", `[{headers: [{type: RegularExpression, name: x-a, value: "1,.*"}]}]`, get("/", "x-a", "1", "x-a", "9"), v2},
		{"headers ANDed", `[{headers: [{name: x-a, value: "1"}, {name: x-b, value: "2"}]}]`, get("/", "x-a", "1"), "Not Found"},
		{"later entry of a name ignored", `[{headers: [{name: x-a, value: "1"}, {name: X-A, value: "2"}]}]`, get("/", "x-a", "1"), v2},
		{"Host header", `[{headers: [{name: host, value: "graph.db:8080"}]}]`, get("/"), v2},
		{"query", `[{queryParams: [{name: v, value: "2"}]}]`, get("/?a=1&v=2"), v2},
		{"query first value", `[{queryParams: [{name: v, value: "2"}]}]`, get("/?v=1&v=2"), "Not Found"},
		{"query unescaped", `[{queryParams: [{name: "a b", value: "c/d"}]}]`, get("/?a+b=c%2Fd"), v2},
		{"query names exact", `[{queryParams: [{name: v, value: "2"}]}]`, get("/?V=2"), "Not Found"},
		{"query regex", `[{queryParams: [{type: RegularExpression, name: v, value: "[0-9]"}]}]`, get("/?v=7"), v2},
		{"query bad escape", `[{queryParams: [{name: v, value: "2"}]}]`, get("/?v=%zz"), "Not Found"},
		{"matches ORed", `[{path: {value: /a}}, {path: {value: /b}}]`, get("/b"), v2},
		{"fields ANDed", `[{path: {value: /a}, method: GET, queryParams: [{name: q, value: "1"}]}]`, get("/a?q=2"), "Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rule := "  rules: [{backendRefs: [{name: graph-v2, port: 8080}]}]\n"
			if tc.matches != "" {
				rule = "  rules: [{matches: " + tc.matches + ", backendRefs: [{name: graph-v2, port: 8080}]}]\n"
			}
			tbl := compile(t, route+rule)
			if got := decided(tbl.Route(tc.req, 0)); got != tc.want {
				t.Errorf("Route(%s %s?%s) = %s, want %s\n%s", tc.req.Method, tc.req.Path, tc.req.RawQuery, got, tc.want, tbl)
			}
		})
	}
}

// A Service without routes is balanced as usual: the decision says so.
func TestNoRoutes(t *testing.T) {
	other := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other}
spec:
  parentRefs: [{group: "", kind: Service, name: graph, port: 9090}]
  rules: [{backendRefs: [{name: graph-v2, port: 8080}]}]
`
	for name, tbl := range map[string]*Table{
		"nil table":               nil,
		"no route":                Compile(graphHTTP, Routes{}, mesh),
		"a route on another port": compile(t, other),
	} {
		if d := tbl.Route(get("/"), 0); d.Routed || d.Status != 0 {
			t.Errorf("%s: Route = %+v, want not routed", name, d)
		}
	}
}

func TestGRPCMatches(t *testing.T) {
	const grpcRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{group: "", kind: Service, name: graph, sectionName: grpc}]
  rules:
  - matches: [{method: {service: trellis.graph.v1.Graph, method: GetNode}}]
    backendRefs: [{name: graph-v1, port: 9090}]
  - matches: [{method: {service: trellis.graph.v1.Graph}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: graph-v2, port: 9090}]
  - matches: [{method: {type: RegularExpression, method: "List.*"}}]
    backendRefs: [{name: graph-v2, port: 9090}]
  - matches: [{method: {service: trellis.graph.v1.Admin}}]
    backendRefs: [{name: graph-v2, port: 9090, weight: 0}]
`
	tbl := Compile(Target{Namespace: "db", Name: "graph", Port: 9090}, parse(t, grpcRoute), mesh)
	for _, tc := range []struct {
		name string
		req  *Request
		want string
		code int
	}{
		{"service and method", call("/trellis.graph.v1.Graph/GetNode", "x-canary", "1"), "g[0] db/graph-v1:9090", 0},
		{"service and header", call("/trellis.graph.v1.Graph/Walk", "x-canary", "1"), "g[1] db/graph-v2:9090", 0},
		{"method regex, any service", call("/other.Svc/ListAll"), "g[2] db/graph-v2:9090", 0},
		{"nothing matches", call("/trellis.graph.v1.Graph/Walk"), "Not Found", 12},
		{"not a gRPC path", call("/trellis.graph.v1.Graph"), "Not Found", 12},
		{"not gRPC", get("/trellis.graph.v1.Graph/GetNode"), "Not Found", 0},
		{"no backend weight", call("/trellis.graph.v1.Admin/Drop"), "g[3] Internal Server Error", 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tbl.Route(tc.req, 0)
			if got := decided(d); got != tc.want || d.GRPCStatus != tc.code {
				t.Errorf("Route(%s) = %s, grpc-status %d; want %s, %d\n%s", tc.req.Path, got, d.GRPCStatus, tc.want, tc.code, tbl)
			}
		})
	}
}
