package kube

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/route"
)

func unstructuredOf(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil { // integers as int64, as informers give them
		t.Fatal(err)
	}
	return u
}

func listerOf(t *testing.T, i int, gvrs []gvrLister, docs ...string) []gvrLister {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, d := range docs {
		if err := idx.Add(unstructuredOf(t, d)); err != nil {
			t.Fatal(err)
		}
	}
	gvr := gvrs[i].gvr
	return []gvrLister{{gvr, cache.NewGenericLister(idx, gvr.GroupResource())}}
}

// Routes listed from the API server reach the snapshot in a stable order,
// with their age and generation, and each status goes to the object it
// was computed for; one that does not decode stays out of the snapshot
// and its status says why.
func TestListRoutes(t *testing.T) {
	snap := &catalog.Snapshot{Services: []*catalog.Service{
		{Meta: catalog.Meta{Name: "hello", Namespace: "mesh"}, ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 8080}}},
		{Meta: catalog.Meta{Name: "hello2", Namespace: "mesh"}, ClusterIP: netip.MustParseAddr("10.96.0.11"),
			Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 8080}}},
	}}
	httpRoute := func(name, weight string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ` + name + `, namespace: mesh, generation: 3, creationTimestamp: "2026-12-01T10:00:00Z", resourceVersion: "9"}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 8080}]
  rules: [{backendRefs: [{name: hello2, port: 8080, weight: ` + weight + `}]}]
status: {parents: [{parentRef: {name: gw}, controllerName: example.com/gateway, conditions: []}]}
`
	}
	all := [][]gvrLister{
		listerOf(t, 0, []gvrLister{{gvr: HTTPRouteResources[0]}}, httpRoute("b", "1"), httpRoute("a", "2")),
		nil,
		listerOf(t, 0, []gvrLister{{gvr: VirtualServiceResources[0]}}, `apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: odd, namespace: mesh, generation: 2}
spec:
  hosts: [hello]
  http: [{route: [{destination: {host: hello2}}]}]
  gateways: [mesh]
  tcpRouting: true
`),
	}
	routes := listRoutes(snap, all, newWarnings())
	if len(snap.HTTPRoutes) != 2 || snap.HTTPRoutes[0].Name != "a" || snap.HTTPRoutes[1].Name != "b" || len(snap.VirtualServices) != 0 {
		t.Fatalf("snapshot routes: %d HTTPRoutes %v, %d VirtualServices; want a, b and none", len(snap.HTTPRoutes), snap.HTTPRoutes, len(snap.VirtualServices))
	}
	if a := snap.HTTPRoutes[0]; a.Generation != 3 || !a.CreationTimestamp.Equal(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("route a: generation %d, created %v; want the API server's", a.Generation, a.CreationTimestamp)
	}
	ups := routes.statuses(snap)
	if len(ups) != 3 {
		t.Fatalf("%d statuses, want 3", len(ups))
	}
	for i, name := range []string{"a", "b", "odd"} {
		if got := ups[i].obj.GetName(); got != name {
			t.Errorf("status %d is for %s, want %s", i, got, name)
		}
		if len(ups[i].parents) != 1 {
			t.Fatalf("%s: %d parents in its status, want 1", name, len(ups[i].parents))
		}
	}
	if c := ups[0].parents[0].Conditions[0]; c.Type != route.ConditionAccepted || c.Status != catalog.ConditionTrue || c.ObservedGeneration != 3 {
		t.Errorf("route a: %+v, want Accepted True at generation 3", c)
	}
	odd := ups[2].parents[0].Conditions[0]
	if odd.Status != catalog.ConditionFalse || !strings.Contains(odd.Message, "tcpRouting") || odd.ObservedGeneration != 2 {
		t.Errorf("the VirtualService that does not decode: %+v, want Accepted False naming tcpRouting", odd)
	}
}

// Trellis's entries in a status replace its old ones; other controllers'
// stay. A condition keeps its transition time while its status holds, and
// nothing is written when nothing changed.
func TestMergeParents(t *testing.T) {
	u := unstructuredOf(t, `kind: HTTPRoute
status:
  parents:
  - {parentRef: {name: gw}, controllerName: example.com/gateway, conditions: [{type: Accepted, status: "True"}]}
  - parentRef: {group: "", kind: Service, name: hello}
    controllerName: trellis.io/mesh
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: Accepted, observedGeneration: 1, lastTransitionTime: "2026-12-01T10:00:00Z"}
    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs, message: ok, observedGeneration: 1, lastTransitionTime: "2026-12-01T10:00:00Z"}
  - {parentRef: {group: "", kind: Service, name: gone}, controllerName: trellis.io/mesh, conditions: []}
`)
	group := ""
	ours := []catalog.RouteParentStatus{{ParentRef: catalog.ParentReference{Group: &group, Kind: "Service", Name: "hello"}, ControllerName: route.ControllerName,
		Conditions: []catalog.Condition{
			{Type: "Accepted", Status: catalog.ConditionTrue, Reason: "Accepted", Message: "Accepted", ObservedGeneration: 2},
			{Type: "ResolvedRefs", Status: catalog.ConditionFalse, Reason: "BackendNotFound", Message: strings.Repeat("é", maxMessage), ObservedGeneration: 2},
		}}}
	now := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	next, changed := mergeParents(u, ours, now)
	if !changed || len(next) != 2 {
		t.Fatalf("merged %d parents (changed %v), want the gateway's and Trellis's one", len(next), changed)
	}
	if next[0].(map[string]any)["controllerName"] != "example.com/gateway" {
		t.Errorf("the other controller's entry was not kept first: %v", next[0])
	}
	conds := next[1].(map[string]any)["conditions"].([]any)
	accepted, resolved := conds[0].(map[string]any), conds[1].(map[string]any)
	if accepted["lastTransitionTime"] != "2026-12-01T10:00:00Z" || accepted["observedGeneration"] != int64(2) {
		t.Errorf("Accepted, still True: %v; want its old transition time and generation 2", accepted)
	}
	if resolved["lastTransitionTime"] != "2026-12-05T09:00:00Z" {
		t.Errorf("ResolvedRefs, now False: transition time %v, want now", resolved["lastTransitionTime"])
	}
	if msg := resolved["message"].(string); len(msg) > maxMessage || !strings.HasSuffix(msg, "é") {
		t.Errorf("a long message is %d bytes, ending %q; want at most %d, cut between characters", len(msg), msg[len(msg)-3:], maxMessage)
	}
	if err := unstructured.SetNestedSlice(u.Object, next, "status", "parents"); err != nil {
		t.Fatal(err)
	}
	if _, changed := mergeParents(u, ours, now.Add(time.Minute)); changed {
		t.Error("merging the same status again changed it: it would be written on every snapshot")
	}
	if _, changed := mergeParents(&unstructured.Unstructured{Object: map[string]any{}}, nil, now); changed {
		t.Error("a route Trellis gives no status to, without one, would be written")
	}
}

// Another controller that keeps the entries it does not own where they
// are and puts its own last (Linkerd's way) agrees with Trellis's merge:
// neither rewrites the other's write.
func TestMergeParentsAgreesWithAnotherController(t *testing.T) {
	u := unstructuredOf(t, "kind: HTTPRoute\nmetadata: {name: r, namespace: mesh}\nstatus: {parents: []}\n")
	group := ""
	ours := func() []catalog.RouteParentStatus {
		return []catalog.RouteParentStatus{{ParentRef: catalog.ParentReference{Group: &group, Kind: "Service", Name: "hello"},
			ControllerName: route.ControllerName,
			Conditions:     []catalog.Condition{{Type: "Accepted", Status: catalog.ConditionTrue, Reason: "Accepted", Message: "Accepted"}}}}
	}
	theirs := map[string]any{"parentRef": map[string]any{"group": "", "kind": "Service", "name": "hello"},
		"controllerName": "example.com/mesh", "conditions": []any{}}
	other := func(parents []any) []any {
		var out []any
		for _, p := range parents {
			if m, ok := p.(map[string]any); !ok || m["controllerName"] != theirs["controllerName"] {
				out = append(out, p)
			}
		}
		return append(out, theirs)
	}
	writes, now := 0, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for round := range 10 {
		if next, changed := mergeParents(u, ours(), now.Add(time.Duration(round)*time.Second)); changed {
			writes++
			if err := unstructured.SetNestedSlice(u.Object, next, "status", "parents"); err != nil {
				t.Fatal(err)
			}
		}
		cur, _, _ := unstructured.NestedSlice(u.Object, "status", "parents")
		if err := unstructured.SetNestedSlice(u.Object, other(cur), "status", "parents"); err != nil {
			t.Fatal(err)
		}
	}
	if writes != 1 {
		t.Errorf("Trellis wrote the same status %d times in 10 rounds with another controller, want once", writes)
	}
}

// Problems are remembered by object: each new one is logged once, and
// what is remembered stays one entry per object, however often a tenant
// changes what is wrong, and none once it is gone.
func TestWarningsPerObject(t *testing.T) {
	w := newWarnings()
	u := unstructuredOf(t, "apiVersion: networking.trellis.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: tenant}\n")
	for i := range 1000 {
		err := fmt.Errorf("unknown field %q", fmt.Sprint("f", i))
		if !w.once("VirtualService", u, err) {
			t.Fatalf("problem %d not reported as new", i)
		}
		w.next()
		if w.once("VirtualService", u, err) {
			t.Fatalf("problem %d reported again in the next snapshot", i)
		}
		w.next()
	}
	if len(w.logged) != 1 {
		t.Errorf("%d problems remembered for one object, want 1", len(w.logged))
	}
	w.next() // a snapshot without the object
	if len(w.logged) != 0 {
		t.Errorf("%d problems remembered after the object went, want 0", len(w.logged))
	}
}

// A VirtualService of one name in one namespace in both Trellis's group
// and Istio's: Trellis's applies, the other is refused with a status that
// says so, and the snapshot holds one route by that name (a proxy knows
// each route by kind, namespace and name).
func TestVirtualServiceInTwoGroups(t *testing.T) {
	snap := &catalog.Snapshot{Services: []*catalog.Service{
		{Meta: catalog.Meta{Name: "hello", Namespace: "mesh"}, ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 8080}}},
	}}
	vs := func(group string) string {
		return `apiVersion: ` + group + `/v1
kind: VirtualService
metadata: {name: same, namespace: mesh, generation: 1}
spec:
  hosts: [hello]
  http: [{route: [{destination: {host: hello}}]}]
`
	}
	both := []gvrLister{{gvr: VirtualServiceResources[0]}, {gvr: VirtualServiceResources[1]}}
	all := [][]gvrLister{nil, nil, append(listerOf(t, 0, both, vs("networking.trellis.io")), listerOf(t, 1, both, vs("networking.istio.io"))...)}
	routes := listRoutes(snap, all, newWarnings())
	if len(snap.VirtualServices) != 1 {
		t.Fatalf("%d VirtualServices in the snapshot, want 1", len(snap.VirtualServices))
	}
	ups := routes.statuses(snap)
	if len(ups) != 2 {
		t.Fatalf("%d statuses, want 2", len(ups))
	}
	if g := ups[0].gvr.Group; g != "networking.trellis.io" || ups[0].parents[0].Conditions[0].Status != catalog.ConditionTrue {
		t.Errorf("first status: group %s %+v, want Trellis's accepted", g, ups[0].parents[0].Conditions[0])
	}
	refused := ups[1].parents[0].Conditions[0]
	if ups[1].gvr.Group != "networking.istio.io" || refused.Status != catalog.ConditionFalse || !strings.Contains(refused.Message, "networking.trellis.io applies instead") {
		t.Errorf("second status: group %s %+v, want Istio's refused, naming Trellis's", ups[1].gvr.Group, refused)
	}
}
