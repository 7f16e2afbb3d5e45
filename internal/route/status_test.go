package route

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// condition returns the condition of type typ of the route's first
// parent, and whether there is one.
func condition(t *testing.T, st []Status, typ string) (catalog.Condition, bool) {
	t.Helper()
	if len(st) != 1 || len(st[0].Parents) != 1 {
		t.Fatalf("status %+v, want one route with one parent", st)
	}
	for _, c := range st[0].Parents[0].Conditions {
		if c.Type == typ {
			return c, true
		}
	}
	return catalog.Condition{}, false
}

// What is refused, with the reason and the field named in the message;
// and a refused route, or dropped rule, changes nothing in the table.
func TestInvalidRoutes(t *testing.T) {
	ok := `{matches: [{path: {value: /ok}}], backendRefs: [{name: graph-v1, port: 8080}]}`
	for _, tc := range []struct {
		name, rules string
		reason, msg string
	}{
		{"unknown path type", `[{matches: [{path: {type: Glob, value: /a}}]}]`, ReasonUnsupportedValue, `rules[0].matches[0].path.type: "Glob": use Exact, PathPrefix or RegularExpression`},
		{"relative path", `[{matches: [{path: {value: a}}]}]`, ReasonUnsupportedValue, `rules[0].matches[0].path.value: "a" must start with /`},
		{"dot segments", `[{matches: [{path: {type: Exact, value: /a/../b}}]}]`, ReasonUnsupportedValue, "without empty, . or .. segments"},
		{"bad regex", `[{matches: [{path: {type: RegularExpression, value: "(a"}}]}]`, ReasonUnsupportedValue, "not a regular expression Go's RE2 syntax accepts"},
		{"backreference", `[{matches: [{headers: [{type: RegularExpression, name: x, value: "(a)\\1"}]}]}]`, ReasonUnsupportedValue, "rules[0].matches[0].headers[0]"},
		{"regex too long", `[{matches: [{path: {type: RegularExpression, value: "/` + strings.Repeat("a", 1100) + `"}}]}]`, ReasonUnsupportedValue, "more than 1024: shorten it"},
		{"lower-case method", `[{matches: [{method: get}]}]`, ReasonUnsupportedValue, `rules[0].matches[0].method: "get" is not an HTTP method`},
		{"header type", `[{matches: [{headers: [{type: Prefix, name: x, value: y}]}]}]`, ReasonUnsupportedValue, `headers[0].type: "Prefix"`},
		{"redirect and rewrite", `[{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: a}}]}]`, ReasonIncompatibleFilters, "keep one of them"},
		{"redirect and backends", `[{filters: [{type: RequestRedirect, requestRedirect: {}}], backendRefs: [{name: graph-v1, port: 8080}]}]`, ReasonIncompatibleFilters, "remove the backendRefs or the redirect"},
		{"prefix replace without prefix match", `[{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]}]`, ReasonUnsupportedValue, "exactly one match, with a PathPrefix path"},
		{"filter type without its field", `[{filters: [{type: RequestHeaderModifier}]}]`, ReasonUnsupportedValue, "set its own field (requestHeaderModifier)"},
		{"unknown filter", `[{filters: [{type: RateLimit}]}]`, ReasonUnsupportedValue, `rules[0].filters[0].type: "RateLimit"`},
		{"extension filter", `[{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}]}]`, ReasonUnsupportedValue, "ExtensionRef filters are not supported"},
		{"repeated header filter", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}]`, ReasonUnsupportedValue, "a second RequestHeaderModifier"},
		{"two actions on a header", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}], remove: [X-A]}}]}]`, ReasonUnsupportedValue, "X-A already has an action in set[0]"},
		{"framing header", `[{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: content-length, value: "1"}]}}]}]`, ReasonUnsupportedValue, "Content-Length cannot be changed"},
		{"regex that multiplies", `[{matches: [{headers: [{type: RegularExpression, name: x, value: "` + strings.Repeat("[a-z]{1000}", 20) + `"}]}]}]`, ReasonUnsupportedValue, "counted repeats"},
		{"the mesh's peer header", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-trellis-peer, value: "workload=x"}]}}]}]`, ReasonUnsupportedValue, "X-Trellis-Peer is the mesh's own"},
		{"the trace context", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [traceparent]}}]}]`, ReasonUnsupportedValue, "Traceparent is the mesh's own"},
		{"repeated backend filter", `[{backendRefs: [{name: graph-v1, port: 8080, filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {}}, {type: ResponseHeaderModifier, responseHeaderModifier: {}}]}]}]`, ReasonUnsupportedValue, "a second ResponseHeaderModifier"},
		{"header value with a newline", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x, value: "a\nb"}]}}]}]`, ReasonUnsupportedValue, "must be 1 to 4096 printable characters"},
		{"redirect status", `[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}]`, ReasonUnsupportedValue, "statusCode: 304: use 301, 302, 303, 307 or 308"},
		{"mirror percent and fraction", `[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 8080}, percent: 5, fraction: {numerator: 1}}}]}]`, ReasonUnsupportedValue, "give one of them"},
		{"backend without port", `[{backendRefs: [{name: graph-v1}]}]`, ReasonUnsupportedValue, "rules[0].backendRefs[0].port: a Service backend needs its port"},
		{"weight out of range", `[{backendRefs: [{name: graph-v1, port: 8080, weight: -1}]}]`, ReasonUnsupportedValue, "backendRefs[0].weight"},
		{"backend filter", `[{backendRefs: [{name: graph-v1, port: 8080, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 8080}}}]}]}]`, ReasonUnsupportedValue, "move the filter to the rule"},
		{"timeout syntax", `[{timeouts: {request: 1.5s}}]`, ReasonUnsupportedValue, "rules[0].timeouts.request"},
		{"backend timeout longer", `[{timeouts: {request: 1s, backendRequest: 2s}}]`, ReasonUnsupportedValue, "longer than the request timeout"},
		{"retry code", `[{retry: {codes: [200]}}]`, ReasonUnsupportedValue, "rules[0].retry.codes[0]: 200"},
		{"retry attempts", `[{retry: {attempts: 0}}]`, ReasonUnsupportedValue, "retry.attempts: 0"},
		{"session persistence", `[{sessionPersistence: {type: Cookie}}]`, ReasonUnsupportedValue, "sessionPersistence: not supported"},
		{"too many rules", "[" + strings.Repeat(ok+",", 16) + ok + "]", ReasonUnsupportedValue, "rules: 17 rules, more than 16: split the route in two"},
		{"too many backends", "[{backendRefs: [" + strings.Repeat("{name: graph-v1, port: 8080},", 17) + "]}]", ReasonUnsupportedValue, "17 backends, more than 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := parse(t, route+"  rules: "+tc.rules+"\n")
			st := Validate(rs, mesh)
			c, _ := condition(t, st, ConditionAccepted)
			if c.Status != catalog.ConditionFalse || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
				t.Errorf("Accepted = %s %s %q, want False %s with %q", c.Status, c.Reason, c.Message, tc.reason, tc.msg)
			}
			// Beside a valid route, the invalid one adds nothing.
			good := parse(t, twoRoutes("HTTPRoute", "good", "", "["+ok+"]"))
			both := Routes{HTTP: append(good.HTTP, rs.HTTP...)}
			if got, want := Compile(graphHTTP, both, mesh).String(), Compile(graphHTTP, good, mesh).String(); got != want {
				t.Errorf("the invalid route changed the table:\n%s\nwant\n%s", got, want)
			}
			// As one rule of a route with a valid one, it is dropped.
			if tc.name == "too many rules" {
				return
			}
			partial := parse(t, route+"  rules: ["+ok+", "+strings.Trim(tc.rules, "[]")+"]\n")
			st = Validate(partial, mesh)
			if c, _ := condition(t, st, ConditionAccepted); c.Status != catalog.ConditionTrue {
				t.Errorf("with a valid rule too: Accepted = %s %s %q, want True", c.Status, c.Reason, c.Message)
			}
			c, found := condition(t, st, ConditionPartiallyInvalid)
			if !found || c.Status != catalog.ConditionTrue || !strings.HasPrefix(c.Message, "Dropped Rule(s): rules[1]") {
				t.Errorf("with a valid rule too: PartiallyInvalid = %+v, want True, Dropped Rule(s): rules[1]...", c)
			}
		})
	}
}

// Backend references the spec calls invalid: ResolvedRefs False; the
// route is still accepted.
func TestResolvedRefs(t *testing.T) {
	for _, tc := range []struct {
		name, backends string
		reason, msg    string
	}{
		{"all resolved", `[{name: graph-v1, port: 8080}]`, ReasonResolvedRefs, "All references resolved"},
		{"missing Service", `[{name: nope, port: 8080}]`, ReasonBackendNotFound, "rules[0].backendRefs[0]: Service db/nope does not exist (its share of requests gets 500)"},
		{"missing port", `[{name: graph-v1, port: 81}]`, ReasonBackendNotFound, "Service db/graph-v1 has no port 81 (it has 8080, 9090)"},
		{"another kind", `[{group: example.io, kind: Bucket, name: b, port: 1}]`, ReasonInvalidKind, `kind "Bucket" of group "example.io": a backend is a Service`},
		{"another namespace (GEP-1294: no ReferenceGrant in a mesh)", `[{name: front, namespace: web, port: 80}]`, ReasonResolvedRefs, "All references resolved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := Validate(parse(t, route+"  rules: [{backendRefs: "+tc.backends+"}]\n"), mesh)
			if c, _ := condition(t, st, ConditionAccepted); c.Status != catalog.ConditionTrue {
				t.Errorf("Accepted = %+v, want True", c)
			}
			c, _ := condition(t, st, ConditionResolvedRefs)
			if c.Reason != tc.reason || (c.Status == catalog.ConditionTrue) != (tc.reason == ReasonResolvedRefs) || !strings.Contains(c.Message, tc.msg) {
				t.Errorf("ResolvedRefs = %s %s %q, want %s with %q", c.Status, c.Reason, c.Message, tc.reason, tc.msg)
			}
		})
	}
	// A missing mirror is dropped, not sent 500s.
	st := Validate(parse(t, route+`  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 1}}}], backendRefs: [{name: graph-v1, port: 8080}]}]
`), mesh)
	if c, _ := condition(t, st, ConditionResolvedRefs); c.Reason != ReasonBackendNotFound || !strings.Contains(c.Message, "rules[0].filters[0].requestMirror.backendRef: Service db/nope does not exist (the mirror is dropped)") {
		t.Errorf("ResolvedRefs = %+v, want the mirror named", c)
	}
}

// Which parents a route attaches to, and what status says of each.
func TestParents(t *testing.T) {
	for _, tc := range []struct {
		name, parent string
		reason, msg  string
		attached     bool // to graph's port 8080
	}{
		{"all ports", `{group: "", kind: Service, name: graph}`, ReasonAccepted, "Accepted", true},
		{"port", `{group: "", kind: Service, name: graph, port: 8080}`, ReasonAccepted, "Accepted", true},
		{"section name", `{group: "", kind: Service, name: graph, sectionName: http}`, ReasonAccepted, "Accepted", true},
		{"port and section name", `{group: "", kind: Service, name: graph, port: 8080, sectionName: http}`, ReasonAccepted, "Accepted", true},
		{"another port", `{group: "", kind: Service, name: graph, port: 9090}`, ReasonAccepted, "Accepted", false},
		{"no such port", `{group: "", kind: Service, name: graph, port: 7}`, ReasonNoMatchingParent, `Service db/graph has no port 7 (it has 8080 "http", 9090 "grpc")`, false},
		{"port and name disagree", `{group: "", kind: Service, name: graph, port: 8080, sectionName: grpc}`, ReasonNoMatchingParent, `no port 8080 named "grpc"`, false},
		{"no such Service", `{group: "", kind: Service, name: nope}`, ReasonNoMatchingParent, "Service db/nope does not exist", false},
		{"group left out", `{kind: Service, name: graph}`, ReasonNoMatchingParent, `write group: "" for a Kubernetes Service`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifest := "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [" + tc.parent +
				"]\n  rules: [{backendRefs: [{name: graph-v1, port: 8080}]}]\n"
			st := Validate(parse(t, manifest), mesh)
			c, _ := condition(t, st, ConditionAccepted)
			if c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
				t.Errorf("Accepted = %s %s %q, want %s with %q", c.Status, c.Reason, c.Message, tc.reason, tc.msg)
			}
			if got := compile(t, manifest).Route(get("/"), 0).Routed; got != tc.attached {
				t.Errorf("attached to graph:8080 = %v, want %v", got, tc.attached)
			}
		})
	}
	gateway := "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: ingress}]\n"
	if st := Validate(parse(t, gateway), mesh); len(st[0].Parents) != 0 {
		t.Errorf("a Gateway parent got status %+v: it is another controller's", st[0].Parents)
	}
}

// Producer routes serve every client; a client namespace with consumer
// routes uses those instead (GEP-1294).
func TestConsumerRoutes(t *testing.T) {
	manifest := twoRoutes("HTTPRoute", "producer", "", `[{backendRefs: [{name: graph-v1, port: 8080}]}]`) + `
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: web}
spec:
  parentRefs: [{group: "", kind: Service, name: graph, namespace: db}]
  rules: [{backendRefs: [{name: graph-v2, namespace: db, port: 8080}]}]
`
	for _, tc := range []struct{ client, want string }{
		{"", "producer[0] db/graph-v1:8080"},
		{"db", "producer[0] db/graph-v1:8080"},
		{"other", "producer[0] db/graph-v1:8080"},
		{"web", "consumer[0] db/graph-v2:8080"},
	} {
		target := graphHTTP
		target.ClientNamespace = tc.client
		if got := decided(Compile(target, parse(t, manifest), mesh).Route(get("/"), 0)); got != tc.want {
			t.Errorf("clients in %q: %s, want %s", tc.client, got, tc.want)
		}
	}
}

// GRPCRoutes and HTTPRoutes of one namespace on the same port: the
// GRPCRoutes win (GEP-1294), and the HTTPRoute says it lost.
func TestGRPCRouteWins(t *testing.T) {
	manifest := twoRoutes("HTTPRoute", "web", "", `[{backendRefs: [{name: graph-v1, port: 8080}]}]`) + "\n---\n" +
		twoRoutes("GRPCRoute", "rpc", "", `[{backendRefs: [{name: graph-v2, port: 8080}]}]`)
	if got := decided(compile(t, manifest).Route(call("/a.B/C"), 0)); got != "rpc[0] db/graph-v2:8080" {
		t.Errorf("a gRPC call went to %s, want the GRPCRoute's backend", got)
	}
	st := Validate(parse(t, manifest), mesh)
	if c := st[0].Parents[0].Conditions[0]; c.Status != catalog.ConditionFalse || c.Reason != ReasonConflicted || !strings.Contains(c.Message, "GRPCRoute db/rpc") {
		t.Errorf("the HTTPRoute's Accepted = %+v, want False, Conflicted, naming GRPCRoute db/rpc", c)
	}
	if c := st[1].Parents[0].Conditions[0]; c.Status != catalog.ConditionTrue {
		t.Errorf("the GRPCRoute's Accepted = %+v, want True", c)
	}
}

func TestObservedGeneration(t *testing.T) {
	rs := parse(t, "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, generation: 7}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: graph}]\n")
	for _, c := range Validate(rs, mesh)[0].Parents[0].Conditions {
		if c.ObservedGeneration != 7 {
			t.Errorf("%s observedGeneration %d, want 7", c.Type, c.ObservedGeneration)
		}
	}
}

// Splits are what accepted routes send where: each backend's share of its
// rule, a consumer route's namespace, and nothing of a refused route.
func TestSplits(t *testing.T) {
	rs := parse(t, route+`  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: graph-v2, port: 8080}]
  - backendRefs: [{name: graph-v1, port: 8080, weight: 3}, {name: graph-v2, port: 8080, weight: 1}, {name: gone, port: 8080, weight: 0}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: consumer, namespace: web}
spec:
  hosts: [graph.db]
  http: [{route: [{destination: {host: graph-v2.db}, weight: 100}, {destination: {host: graph-v1.db}, weight: 0}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: lost, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: nowhere}]
  rules: [{backendRefs: [{name: graph-v1, port: 8080}]}]
`)
	var got []string
	for _, s := range Splits(rs, mesh) {
		got = append(got, fmt.Sprintf("%s %s[%d] %s/%s>%s %.2f %q %v", s.Route.Kind, s.Route.Name, s.Rule, s.Parent.Namespace, s.Parent.Name,
			s.Backend, s.Share, s.Consumers, s.Invalid))
	}
	want := []string{
		`HTTPRoute r[0] db/graph>db/graph-v2:8080 1.00 "" false`,
		`HTTPRoute r[1] db/graph>db/graph-v1:8080 0.75 "" false`,
		`HTTPRoute r[1] db/graph>db/graph-v2:8080 0.25 "" false`,
		`HTTPRoute r[1] db/graph>db/gone:8080 0.00 "" true`,
		`VirtualService consumer[0] db/graph>db/graph-v2:8080 1.00 "web" false`,
		`VirtualService consumer[0] db/graph>db/graph-v1:8080 0.00 "web" false`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("Splits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
