package route

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// share counts, over n random numbers from a fixed seed, the fraction of
// decisions that come out as each decided() string.
func share(tbl *Table, req *Request, n int) map[string]float64 {
	rnd := rand.New(rand.NewPCG(1, 2))
	out := map[string]float64{}
	for range n {
		out[decided(tbl.Route(req, rnd.Uint64()))] += 1 / float64(n)
	}
	return out
}

// A 90/10 split lands within 3 points over 2000 requests.
func TestWeightedSplit(t *testing.T) {
	tbl := compile(t, route+`  rules:
  - backendRefs: [{name: graph-v1, port: 8080, weight: 90}, {name: graph-v2, port: 8080, weight: 10}]
`)
	got := share(tbl, get("/"), 2000)
	for backend, want := range map[string]float64{"r[0] db/graph-v1:8080": 0.9, "r[0] db/graph-v2:8080": 0.1} {
		if d := got[backend] - want; d > 0.03 || d < -0.03 {
			t.Errorf("%s drew %.3f of requests, want %.2f ± 0.03 (all: %v)", backend, got[backend], want, got)
		}
	}
}

func TestWeightsAndInvalidBackends(t *testing.T) {
	for _, tc := range []struct {
		name, backends string
		want           map[string]float64 // share, ± 0.03
	}{
		{"weight 0 is never chosen", `[{name: graph-v1, port: 8080, weight: 0}, {name: graph-v2, port: 8080}]`,
			map[string]float64{"r[0] db/graph-v2:8080": 1}},
		{"all weights 0: 500", `[{name: graph-v1, port: 8080, weight: 0}]`,
			map[string]float64{"r[0] Internal Server Error": 1}},
		{"no backends: 500", `[]`, map[string]float64{"r[0] Internal Server Error": 1}},
		{"an invalid backend's share gets 500", `[{name: graph-v1, port: 8080}, {name: missing, port: 8080}]`,
			map[string]float64{"r[0] db/graph-v1:8080": 0.5, "r[0] Internal Server Error": 0.5}},
		{"an invalid kind's share too", `[{name: graph-v1, port: 8080, weight: 3}, {kind: ServiceImport, group: multicluster.x-k8s.io, name: graph, port: 8080}]`,
			map[string]float64{"r[0] db/graph-v1:8080": 0.75, "r[0] Internal Server Error": 0.25}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compile(t, route+"  rules: [{backendRefs: "+tc.backends+"}]\n")
			got := share(tbl, get("/"), 2000)
			for k, want := range tc.want {
				if d := got[k] - want; d > 0.03 || d < -0.03 {
					t.Errorf("%s: %.3f, want %.2f (all: %v)", k, got[k], want, got)
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("outcomes %v, want only %v", got, tc.want)
			}
		})
	}
}

// The rule's header changes come before the chosen backend's; both are
// applied in order.
func TestHeaderChanges(t *testing.T) {
	tbl := compile(t, route+`  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-env, value: prod}], add: [{name: x-trace, value: "on"}], remove: [x-debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [server]}
    backendRefs:
    - name: graph-v2
      port: 8080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-version, value: "2"}]}}]
`)
	d := tbl.Route(get("/"), 0)
	h := http.Header{"X-Env": {"dev"}, "X-Trace": {"a"}, "X-Debug": {"1"}}
	d.RequestHeaders.Apply(h)
	want := http.Header{"X-Env": {"prod"}, "X-Trace": {"a", "on"}, "X-Version": {"2"}}
	if !equalHeaders(h, want) {
		t.Errorf("request headers after %s = %v, want %v", d.RequestHeaders, h, want)
	}
	if got := d.ResponseHeaders.String(); got != "remove Server" {
		t.Errorf("response headers %q, want %q", got, "remove Server")
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// ReplacePrefixMatch, row by row from the spec's table.
func TestReplacePrefixMatch(t *testing.T) {
	for _, tc := range []struct{ path, prefix, replace, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		{"/a/b", "/", "/x", "/x/a/b"},
	} {
		tbl := compile(t, route+`  rules:
  - matches: [{path: {type: PathPrefix, value: "`+tc.prefix+`"}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "`+tc.replace+`"}}}]
    backendRefs: [{name: graph-v2, port: 8080}]
`)
		if d := tbl.Route(get(tc.path), 0); d.Path != tc.want {
			t.Errorf("%s with prefix %q replaced by %q = %q, want %q", tc.path, tc.prefix, tc.replace, d.Path, tc.want)
		}
	}
}

func TestRewrite(t *testing.T) {
	tbl := compile(t, route+`  rules:
  - filters: [{type: URLRewrite, urlRewrite: {hostname: graph-v2.db.svc.cluster.local, path: {type: ReplaceFullPath, replaceFullPath: /v2/health}}}]
    backendRefs: [{name: graph-v2, port: 8080}]
`)
	if d := tbl.Route(get("/health?full=1"), 0); d.Path != "/v2/health" || d.Host != "graph-v2.db.svc.cluster.local" {
		t.Errorf("rewrite = path %q host %q, want /v2/health and graph-v2.db.svc.cluster.local", d.Path, d.Host)
	}
}

// Redirects: the Location the spec derives, port included only when it
// is not the scheme's own.
func TestRedirect(t *testing.T) {
	for _, tc := range []struct {
		name, filter string
		req          *Request
		status       int
		location     string
	}{
		{"defaults: 302, the request's host, the Service port", `{}`, get("/a?b=1"), 302, "http://graph.db:8080/a?b=1"},
		{"scheme https: port 443 left out", `{scheme: https, statusCode: 301}`, get("/a"), 301, "https://graph.db/a"},
		{"scheme and port", `{scheme: https, port: 8443}`, get("/a"), 302, "https://graph.db:8443/a"},
		{"http on 80", `{hostname: example.com, port: 80}`, get("/a"), 302, "http://example.com/a"},
		{"full path", `{path: {type: ReplaceFullPath, replaceFullPath: /b}, statusCode: 308}`, get("/a"), 308, "http://graph.db:8080/b"},
		{"IPv6 host", `{}`, &Request{Method: "GET", Host: "[fd00::1]:8080", Path: "/a"}, 302, "http://[fd00::1]:8080/a"},
		{"a Host that cannot be written", `{}`, &Request{Method: "GET", Host: "evil.com/x?", Path: "/a"}, 400, ""},
		{"a path that cannot be written", `{}`, &Request{Method: "GET", Host: "graph", Path: "/a\r\nX: y"}, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := compile(t, route+"  rules: [{filters: [{type: RequestRedirect, requestRedirect: "+tc.filter+"}]}]\n")
			d := tbl.Route(tc.req, 0)
			if d.Status != tc.status || d.Location != tc.location || d.Backend != (Backend{}) {
				t.Errorf("redirect %s of %s%s = %d %q (backend %v), want %d %q", tc.filter, tc.req.Host, tc.req.Path, d.Status, d.Location, d.Backend, tc.status, tc.location)
			}
		})
	}
	tbl := compile(t, route+`  rules:
  - matches: [{path: {value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
`)
	if d := tbl.Route(get("/old/x"), 0); d.Location != "http://graph.db:8080/new/x" {
		t.Errorf("prefix redirect of /old/x to %q, want http://graph.db:8080/new/x", d.Location)
	}
}

func TestMirrors(t *testing.T) {
	tbl := compile(t, route+`  rules:
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 8080}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: graph-v1, port: 8080}, fraction: {numerator: 1, denominator: 4}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 8080}}}
    backendRefs: [{name: graph-v2, port: 8080}]
`)
	rnd := rand.New(rand.NewPCG(3, 4))
	counts := map[Backend]int{}
	const n = 2000
	for range n {
		for _, m := range tbl.Route(get("/"), rnd.Uint64()).Mirrors {
			counts[m]++
		}
	}
	shadow, v1 := Backend{Namespace: "db", Name: "shadow", Port: 8080}, Backend{Namespace: "db", Name: "graph-v1", Port: 8080}
	if counts[shadow] != n || len(counts) != 2 {
		t.Errorf("mirrored %v, want every request to %v, some to %v, none to the missing Service", counts, shadow, v1)
	}
	if got := float64(counts[v1]) / n; got < 0.22 || got > 0.28 {
		t.Errorf("mirrored %.3f of requests to %v, want 0.25 ± 0.03", got, v1)
	}
}

func TestTimeoutsAndRetry(t *testing.T) {
	tbl := compile(t, route+`  rules:
  - matches: [{path: {value: /slow}}]
    timeouts: {request: 1m30s, backendRequest: 0s}
    retry: {codes: [502, 503], attempts: 3, backoff: 250ms}
    backendRefs: [{name: graph-v2, port: 8080}]
  - matches: [{path: {value: /off}}]
    timeouts: {request: 0s, backendRequest: 1h}
    backendRefs: [{name: graph-v2, port: 8080}]
`)
	d := tbl.Route(get("/slow"), 0)
	if want := (Timeouts{Request: 90 * time.Second, BackendRequest: NoTimeout}); d.Timeouts != want {
		t.Errorf("timeouts %+v, want %+v", d.Timeouts, want)
	}
	if r := d.Retry; r == nil || !slices.Equal(r.Codes, []int{502, 503}) || r.Attempts != 3 || r.Backoff != 250*time.Millisecond {
		t.Errorf("retry %+v, want codes 502 503, 3 attempts, 250ms", r)
	}
	if d := tbl.Route(get("/off"), 0); d.Timeouts.Request != NoTimeout || d.Timeouts.BackendRequest != time.Hour || d.Retry != nil {
		t.Errorf("/off: timeouts %+v, retry %v; want none for the request, 1h a try, no retry", d.Timeouts, d.Retry)
	}
}

func TestDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0s": 0, "500ms": 500 * time.Millisecond, "1h30m": 90 * time.Minute, "00060m": time.Hour,
		"1h2h20m10m": 3*time.Hour + 30*time.Minute, "1h30m30s500ms": time.Hour + 30*time.Minute + 30*time.Second + 500*time.Millisecond,
	} {
		if got, err := parseDuration(durationOf(in)); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in == "1h30m" || in == "500ms" || in == "0s" {
			if got := formatDuration(want); got != in {
				t.Errorf("formatDuration(%v) = %q, want %q", want, got, in)
			}
		}
	}
	for _, in := range []string{"", "0", "1.5s", "-1s", "1d", "123456s", "1h1m1s1ms1h", "1us", "s"} {
		if got, err := parseDuration(durationOf(in)); err == nil {
			t.Errorf("parseDuration(%q) = %v, want an error", in, got)
		}
	}
}

// A VirtualService decides in order, with Istio's meanings: the first
// http route that matches wins even when a later one is more specific, a
// uri prefix is a prefix of the string, and a rewrite replaces exactly
// it; faults abort and delay their share of requests.
func TestVirtualServiceDecisions(t *testing.T) {
	tbl := compile(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: db}
spec:
  hosts: [graph]
  http:
  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: graph-v2, port: {number: 8080}}}]
  - match: [{uri: {exact: /api/exact}}]
    route: [{destination: {host: graph-v1, port: {number: 8080}}}]
  - match: [{uri: {prefix: /faulty}}]
    fault: {abort: {httpStatus: 418, grpcStatus: UNAVAILABLE, percentage: {value: 50}}, delay: {fixedDelay: 250ms}}
    route: [{destination: {host: graph-v1, port: {number: 8080}}}]
`)
	for path, want := range map[string]string{
		"/api/exact": "vs[0] db/graph-v2:8080", // the first match wins
		"/apis":      "vs[0] db/graph-v2:8080", // a prefix of the string
		"/other":     "Not Found",
	} {
		if got := decided(tbl.Route(get(path), 1)); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	if d := tbl.Route(get("/apis/x"), 1); d.Path != "/v2s/x" {
		t.Errorf("/apis/x rewritten to %q, want /v2s/x (the prefix /api replaced)", d.Path)
	}
	aborted, delayed := 0, 0
	const n = 10000
	for i := range uint64(n) {
		req := get("/faulty")
		req.GRPC = i%2 == 0
		d := tbl.Route(req, i*0x9e3779b97f4a7c15)
		switch {
		case d.Fault && d.Status == 418 && (req.GRPC == (d.GRPCStatus == 14)):
			aborted++
		case d.Status == 0 && d.Delay == 250*time.Millisecond && d.Resilient():
			delayed++
		default:
			t.Fatalf("decision %+v is neither an abort nor a delay", d)
		}
	}
	if aborted < n*48/100 || aborted > n*52/100 || aborted+delayed != n {
		t.Errorf("%d of %d aborted and %d delayed, want half aborted, the rest delayed", aborted, n, delayed)
	}
}

// A VirtualService's problems are said with Istio's field names, and one
// refused whole still has its status.
func TestVirtualServiceStatusNamesIstioFields(t *testing.T) {
	rs := parse(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: db}
spec:
  hosts: [graph]
  http:
  - redirect: {uri: /x, redirectCode: 399}
  - route: [{destination: {host: graph-v1, port: {number: 8080}}}]
    headers: {request: {set: {x-trellis-peer: forged}}}
  - route: [{destination: {host: graph-v1, port: {number: 8080}}}]
    timeout: 0s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp, namespace: db}
spec:
  hosts: [graph]
  tcp: [{}]
`)
	st := statusText(Validate(rs, mesh))
	for _, want := range []string{"http[0].redirect.statusCode", "http[1].headers.request", "VirtualService db/tcp parentRefs[0]:\n   Accepted False UnsupportedValue: tcp:"} {
		if !strings.Contains(st, want) {
			t.Errorf("status does not say %q:\n%s", want, st)
		}
	}
	if tbl := Compile(graphHTTP, rs, mesh); tbl.Route(get("/"), 0).Timeouts.Request != NoTimeout {
		t.Errorf("timeout: 0s is not \"no timeout\":\n%s", tbl)
	}
}

// A destination without a port goes to the port the request was sent to
// when its Service has several, as in Istio, and to the only one when it
// has one.
func TestVirtualServiceDestinationPortOfTheRequest(t *testing.T) {
	rs := parse(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: db}
spec:
  hosts: [graph]
  http:
  - route: [{destination: {host: graph-v2}, weight: 100}, {destination: {host: graph-v1}, weight: 0}]
`)
	for _, c := range []struct {
		port int32
		want string
	}{{8080, "vs[0] db/graph-v2:8080"}, {9090, "vs[0] db/graph-v2:9090"}} {
		tbl := Compile(Target{Namespace: "db", Name: "graph", Port: c.port}, rs, mesh)
		if got := decided(tbl.Route(get("/"), 1)); got != c.want {
			t.Errorf("port %d: %s, want %s", c.port, got, c.want)
		}
	}
	one := Config{Services: append(slices.Clone(mesh.Services), Service{Namespace: "db", Name: "graph-v2", Ports: []Port{{"http", 8080}}})}
	one.Services = slices.DeleteFunc(one.Services, func(s Service) bool { return s.Name == "graph-v2" && len(s.Ports) == 2 })
	if got := decided(Compile(Target{Namespace: "db", Name: "graph", Port: 9090}, rs, one).Route(get("/"), 1)); got != "vs[0] db/graph-v2:8080" {
		t.Errorf("to graph-v2 with one port: %s, want its port 8080", got)
	}
	if st := Validate(rs, mesh); len(st) != 1 || st[0].Parents[0].Conditions[1].Status != catalog.ConditionTrue {
		t.Errorf("status %+v, want the destinations resolved", st)
	}
}

// A destination without a port that lacks a port of its parent Service
// gets that port's requests answered 500, and the status says so.
func TestVirtualServiceDestinationLackingTheRequestPort(t *testing.T) {
	rs := parse(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: web}
spec:
  hosts: [front]
  http: [{route: [{destination: {host: graph-v1.db}}]}]
`)
	if got := decided(Compile(Target{Namespace: "web", Name: "front", Port: 80}, rs, mesh).Route(get("/"), 1)); got != "front[0] Internal Server Error" {
		t.Errorf("a request to front:80: %s, want 500 (graph-v1 has no port 80)", got)
	}
	c := Validate(rs, mesh)[0].Parents[0].Conditions[1]
	if c.Status != catalog.ConditionFalse || c.Reason != ReasonBackendNotFound || !strings.Contains(c.Message, "has no port 80") {
		t.Errorf("ResolvedRefs %+v, want False BackendNotFound naming port 80", c)
	}
}

// A destination's subset is kept in the decision, in Explain's shares and
// in Splits; one the Service's DestinationRule does not define gets 500
// (gRPC UNAVAILABLE), and the route's ResolvedRefs is False,
// BackendNotFound, naming the subset and the rule.
func TestVirtualServiceSubsets(t *testing.T) {
	const vs = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: db}
spec:
  hosts: [graph]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: graph, subset: v2}}]
  - match: [{headers: {x-version: {exact: v9}}}]
    route: [{destination: {host: graph, subset: v9}}]
  - route:
    - {destination: {host: graph, subset: v1}, weight: 50}
    - {destination: {host: graph, subset: v2}, weight: 50}
`
	tbl := compile(t, vs)
	for _, tc := range []struct{ version, want string }{
		{"v2", "vs[0] db/graph:8080 subset v2"},
		{"v9", "vs[1] Internal Server Error"},
	} {
		if got := decided(tbl.Route(get("/", "X-Version", tc.version), 1)); got != tc.want {
			t.Errorf("x-version %s: %s, want %s", tc.version, got, tc.want)
		}
	}
	if d := tbl.Route(&Request{GRPC: true, Method: "POST", Path: "/a.B/C", Header: header("X-Version", "v9")}, 1); d.Status != 500 || d.GRPCStatus != 14 {
		t.Errorf("a gRPC call to subset v9: status %d, grpc-status %d, want 500 and 14", d.Status, d.GRPCStatus)
	}
	counts := map[string]int{}
	for i := range uint64(1000) {
		counts[tbl.Route(get("/"), i*0x9e3779b97f4a7c15).Backend.Subset]++
	}
	if counts["v1"] < 450 || counts["v2"] < 450 || counts["v1"]+counts["v2"] != 1000 {
		t.Errorf("the 50/50 split went %v, want about 500 to each subset", counts)
	}
	d, shares := tbl.Explain(get("/"))
	if d.Rule != 2 || len(shares) != 2 || shares[0].Backend.String() != "db/graph:8080 subset v1" || shares[1].Backend.Subset != "v2" || shares[0].Share != 0.5 {
		t.Errorf("Explain(/) = rule %d, %+v; want rule 2, half to each subset", d.Rule, shares)
	}

	rs := parse(t, vs)
	var splits []string
	for _, s := range Splits(rs, mesh) {
		splits = append(splits, fmt.Sprintf("%s %.2f %v", s.Backend, s.Share, s.Invalid))
	}
	want := []string{"db/graph:8080 subset v2 1.00 false", "db/graph:8080 subset v9 1.00 true",
		"db/graph:8080 subset v1 0.50 false", "db/graph:8080 subset v2 0.50 false"}
	if !slices.Equal(splits, want) {
		t.Errorf("Splits = %q, want %q", splits, want)
	}
	st := Validate(rs, mesh)
	c := st[0].Parents[0].Conditions[1]
	wantMsg := `http[1].route[0]: Service db/graph has no subset "v9": add it to spec.subsets of DestinationRule db/graph (its share of requests gets 500)`
	if c.Type != ConditionResolvedRefs || c.Status != catalog.ConditionFalse || c.Reason != ReasonBackendNotFound || c.Message != wantMsg {
		t.Errorf("ResolvedRefs = %+v, want False, BackendNotFound, %q", c, wantMsg)
	}
}
