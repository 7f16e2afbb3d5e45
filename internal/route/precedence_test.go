package route

import (
	"strconv"
	"testing"
)

// Precedence across every rule of every route, the spec's criteria one at
// a time: two routes, "a" created first with rules that lose on the
// criterion, "b" with the rule that wins. Without the criterion, "a"
// would win as the older route.
func TestHTTPPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   string // rules of routes a and b
		req    *Request
		winner string
	}{
		{"Exact before any prefix",
			`[{matches: [{path: {type: PathPrefix, value: /api/v1/nodes}}]}]`,
			`[{matches: [{path: {type: Exact, value: /api/v1/nodes}}]}]`, get("/api/v1/nodes"), "b[0]"},
		{"longest prefix",
			`[{matches: [{path: {value: /api}}]}]`, `[{matches: [{path: {value: /api/v1}}]}]`, get("/api/v1/x"), "b[0]"},
		{"method before headers",
			`[{matches: [{path: {value: /api}, headers: [{name: x-a, value: "1"}, {name: x-b, value: "2"}]}]}]`,
			`[{matches: [{path: {value: /api}, method: GET}]}]`, get("/api", "x-a", "1", "x-b", "2"), "b[0]"},
		{"more headers",
			`[{matches: [{headers: [{name: x-a, value: "1"}], queryParams: [{name: q, value: "1"}, {name: r, value: "1"}]}]}]`,
			`[{matches: [{headers: [{name: x-a, value: "1"}, {name: x-b, value: "2"}]}]}]`, get("/?q=1&r=1", "x-a", "1", "x-b", "2"), "b[0]"},
		{"more query params",
			`[{matches: [{queryParams: [{name: q, value: "1"}]}]}]`,
			`[{matches: [{queryParams: [{name: q, value: "1"}, {name: r, value: "1"}]}]}]`, get("/?q=1&r=1"), "b[0]"},
		{"across rules of one route, then rule order",
			`[{matches: [{path: {value: /}}]}, {matches: [{path: {type: Exact, value: /x}}]}, {matches: [{path: {type: Exact, value: /x}}]}]`,
			`[{matches: [{path: {value: /x}}]}]`, get("/x"), "a[1]"},
		{"regex before prefix, after Exact",
			`[{matches: [{path: {value: /v1}}]}, {matches: [{path: {type: Exact, value: /v1/a}}]}]`,
			`[{matches: [{path: {type: RegularExpression, value: "/v1/.*"}}]}]`, get("/v1/b"), "b[0]"},
		{"Exact before regex",
			`[{matches: [{path: {type: Exact, value: /v1/b}}]}]`,
			`[{matches: [{path: {type: RegularExpression, value: "/v1/.*"}}]}]`, get("/v1/b"), "a[0]"},
		{"a rule without matches is the prefix /",
			`[{}]`, `[{matches: [{path: {value: /x}}]}]`, get("/x"), "b[0]"},
		{"all equal: the older route",
			`[{matches: [{path: {value: /x}}]}]`, `[{matches: [{path: {value: /x}}]}]`, get("/x"), "a[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifest := twoRoutes("HTTPRoute", "a", "2024-01-01T00:00:00Z", tc.a) + "\n---\n" + twoRoutes("HTTPRoute", "b", "2025-01-01T00:00:00Z", tc.b)
			tbl := compile(t, manifest)
			d := tbl.Route(tc.req, 0)
			if got := d.Route.Name + "[" + strconv.Itoa(d.Rule) + "]"; got != tc.winner {
				t.Errorf("Route(%s?%s) chose %s, want %s\n%s", tc.req.Path, tc.req.RawQuery, got, tc.winner, tbl)
			}
		})
	}
}

// The tie-breaks between routes: the oldest first, then namespace/name in
// alphabetical order.
func TestRouteTieBreaks(t *testing.T) {
	rules := `[{matches: [{path: {value: /}}]}]`
	for _, tc := range []struct {
		name   string
		routes []string
		winner string
	}{
		{"oldest wins over name", []string{
			twoRoutes("HTTPRoute", "a", "2025-06-01T00:00:00Z", rules),
			twoRoutes("HTTPRoute", "b", "2025-01-01T00:00:00Z", rules)}, "b"},
		{"same age: alphabetical", []string{
			twoRoutes("HTTPRoute", "b", "2025-01-01T00:00:00Z", rules),
			twoRoutes("HTTPRoute", "a", "2025-01-01T00:00:00Z", rules)}, "a"},
		{"no timestamps: alphabetical", []string{
			twoRoutes("HTTPRoute", "zeta", "", rules),
			twoRoutes("HTTPRoute", "alpha", "", rules)}, "alpha"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compile(t, tc.routes[0]+"\n---\n"+tc.routes[1])
			if d := tbl.Route(get("/x"), 0); d.Route.Name != tc.winner {
				t.Errorf("Route chose %s, want %s\n%s", d.Route.Name, tc.winner, tbl)
			}
		})
	}
}

// GRPCRoute precedence: characters of the service, then of the method,
// then header matches, then the older route.
func TestGRPCPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name, a, b string
		req        *Request
		winner     string
	}{
		{"longer service",
			`[{matches: [{method: {method: Get}, headers: [{name: x-a, value: "1"}]}]}]`,
			`[{matches: [{method: {service: pkg.Svc}}]}]`, call("/pkg.Svc/Get", "x-a", "1"), "b[0]"},
		{"longer method",
			`[{matches: [{method: {service: pkg.Svc}, headers: [{name: x-a, value: "1"}]}]}]`,
			`[{matches: [{method: {service: pkg.Svc, method: Get}}]}]`, call("/pkg.Svc/Get", "x-a", "1"), "b[0]"},
		{"more headers",
			`[{matches: [{method: {service: pkg.Svc}}]}]`,
			`[{matches: [{method: {service: pkg.Svc}, headers: [{name: x-a, value: "1"}]}]}]`, call("/pkg.Svc/Get", "x-a", "1"), "b[0]"},
		{"all equal: the older route",
			`[{matches: [{method: {service: pkg.Svc}}]}]`, `[{matches: [{method: {service: pkg.Svc}}]}]`, call("/pkg.Svc/Get"), "a[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifest := twoRoutes("GRPCRoute", "a", "2024-01-01T00:00:00Z", tc.a) + "\n---\n" + twoRoutes("GRPCRoute", "b", "2025-01-01T00:00:00Z", tc.b)
			tbl := compile(t, manifest)
			d := tbl.Route(tc.req, 0)
			if got := d.Route.Name + "[" + strconv.Itoa(d.Rule) + "]"; got != tc.winner {
				t.Errorf("Route(%s) chose %s, want %s\n%s", tc.req.Path, got, tc.winner, tbl)
			}
		})
	}
}

// twoRoutes writes a route of kind on graph's HTTP port, created at
// created (none when empty), with rules sending to graph-v1.
func twoRoutes(kind, name, created, rules string) string {
	meta := "{name: " + name + ", namespace: db}"
	if created != "" {
		meta = "{name: " + name + ", namespace: db, creationTimestamp: \"" + created + "\"}"
	}
	return "apiVersion: gateway.networking.k8s.io/v1\nkind: " + kind + "\nmetadata: " + meta + `
spec:
  parentRefs: [{group: "", kind: Service, name: graph, port: 8080}]
  rules: ` + rules + "\n"
}

func call(path string, kv ...string) *Request {
	return &Request{GRPC: true, Method: "POST", Path: path, Header: header(kv...)}
}
