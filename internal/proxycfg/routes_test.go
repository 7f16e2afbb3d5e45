package proxycfg

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/route"
)

// testRoutes attach to snapshot()'s Services as users write them. Which
// proxy gets which is in TestRoutesForPod.
var testRoutes = mustParse(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alpha-canary, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 8080}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: listed, port: 80}]
  - backendRefs: [{name: alpha, port: 8080, weight: 90}, {name: listed, port: 80, weight: 10}]
---
# A consumer route of the client's namespace.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alpha-timeouts, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, namespace: db}]
  rules: [{timeouts: {request: 2s}, backendRefs: [{name: alpha, namespace: db, port: 8080}]}]
---
# Another namespace's consumer route.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alpha-other, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, namespace: db}]
---
# A Gateway's route, and one whose Service does not exist.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-gateway, namespace: db}
spec:
  parentRefs: [{name: gateway}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ghost, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: ghost}]
---
# zero is exported to its own namespace only.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zero-route, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: zero}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: alpha-rpc, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, sectionName: grpc-api}]
  rules: [{matches: [{method: {service: graph.Graph}}], backendRefs: [{name: alpha, port: 9080}]}]
`)

func mustParse(yaml string) *manifest.Set {
	set, err := manifest.Parse([]manifest.Source{{Name: "routes.yaml", Data: []byte(yaml)}})
	if err != nil {
		panic(err)
	}
	return set
}

// A proxy gets the producer routes of the Services it sees and its own
// namespace's consumer routes; not other namespaces' consumer routes, nor
// routes of Services it does not see or that do not exist, nor a
// Gateway's.
func TestRoutesForPod(t *testing.T) {
	snap := snapshot()
	r := Render(snap, "cluster.local")
	for _, tc := range []struct{ ns, pod, want string }{
		{"client", "client", "HTTPRoute client/alpha-timeouts, HTTPRoute db/alpha-canary, GRPCRoute db/alpha-rpc"},
		{"db", "alpha-1", "HTTPRoute db/alpha-canary, HTTPRoute db/zero-route, GRPCRoute db/alpha-rpc"},
	} {
		cfg, err := ForPod(snap.Pod(tc.ns, tc.pod), r, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rt := range cfg.GetRoutes() {
			got = append(got, rt.GetKind()+" "+rt.GetNamespace()+"/"+rt.GetName())
		}
		if g := strings.Join(got, ", "); g != tc.want {
			t.Errorf("ForPod(%s/%s) routes = %s, want %s", tc.ns, tc.pod, g, tc.want)
		}
	}
}

// A change to a route a proxy gets changes its config's version; a
// change to a route it does not get leaves the version alone.
func TestRoutesChangeVersion(t *testing.T) {
	version := func(change func(*catalog.Snapshot)) string {
		snap := snapshot()
		change(snap)
		cfg, err := ForPod(snap.Pod("client", "client"), Render(snap, "cluster.local"), "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		return cfg.GetVersion()
	}
	addHostname := func(name string) func(*catalog.Snapshot) {
		return func(snap *catalog.Snapshot) {
			i := slices.IndexFunc(snap.HTTPRoutes, func(r *catalog.HTTPRoute) bool { return r.Name == name })
			c := *snap.HTTPRoutes[i]
			c.Spec.Hostnames = append(slices.Clip(c.Spec.Hostnames), "alpha.example")
			snap.HTTPRoutes[i] = &c
		}
	}
	base := version(func(*catalog.Snapshot) {})
	if v := version(addHostname("alpha-canary")); v == base {
		t.Error("a change to a producer route the client gets left its version alone")
	}
	if v := version(addHostname("alpha-other")); v != base {
		t.Error("a change to another namespace's consumer route changed the client's version")
	}
	if v := version(func(s *catalog.Snapshot) { s.HTTPRoutes, s.GRPCRoutes = nil, nil }); v == base {
		t.Error("removing every route left the client's version alone")
	}
}

// Status is computed against the Services proxies see, with their TCP
// ports by name.
func TestRouteStatus(t *testing.T) {
	snap := snapshot()
	extra := mustParse(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alpha-dns, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 53}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pending-route, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: pending}]
`)
	snap.HTTPRoutes = append(snap.HTTPRoutes, extra.HTTPRoutes()...)
	got := map[string]string{}
	for _, st := range RouteStatus(snap) {
		var conds []string
		for _, p := range st.Parents {
			if p.ControllerName != route.ControllerName {
				t.Errorf("%s: controllerName %q, want %q", st.Route, p.ControllerName, route.ControllerName)
			}
			for _, c := range p.Conditions {
				conds = append(conds, c.Type+"="+string(c.Status)+"/"+c.Reason+" "+c.Message)
			}
		}
		got[st.Route.String()] = strings.Join(conds, "; ")
	}
	for name, want := range map[string][]string{
		"HTTPRoute db/alpha-canary":       {"Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"},
		"HTTPRoute client/alpha-timeouts": {"Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"}, // GEP-1294: any namespace
		"HTTPRoute db/ghost":              {"Accepted=False/NoMatchingParent parentRefs[0]: Service db/ghost does not exist"},
		"HTTPRoute db/via-gateway":        nil,
		"GRPCRoute db/alpha-rpc":          {"Accepted=True/Accepted"},
		// UDP ports and Services without a VIP are not the proxies'.
		"HTTPRoute db/alpha-dns":     {`Accepted=False/NoMatchingParent parentRefs[0]: Service db/alpha has no port 53 (it has 8080 "http", 9080 "grpc-api")`},
		"HTTPRoute db/pending-route": {"Accepted=False/NoMatchingParent parentRefs[0]: Service db/pending does not exist"},
	} {
		g, ok := got[name]
		if !ok {
			t.Errorf("RouteStatus has no %s", name)
		}
		for _, w := range want {
			if !strings.Contains(g, w) {
				t.Errorf("status of %s = %q, want %q in it", name, g, w)
			}
		}
		if want == nil && g != "" {
			t.Errorf("status of %s = %q, want no parent of Trellis's", name, g)
		}
	}
	if n := len(RouteStatus(snap)); n != len(snap.HTTPRoutes)+len(snap.GRPCRoutes) {
		t.Errorf("RouteStatus gave %d statuses for %d routes", n, len(snap.HTTPRoutes)+len(snap.GRPCRoutes))
	}
}
