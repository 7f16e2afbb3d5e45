package localmesh

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/discovery"
)

// twoServices' graph-alpha with a 90/10 split to itself and web, and a
// GRPCRoute on its gRPC port.
const routedMesh = twoServices + `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: graph-alpha, port: 8080}]
  rules:
  - backendRefs: [{name: graph-alpha, port: 8080, weight: 90}, {name: web, namespace: default, port: 80, weight: 0}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: graph-alpha, sectionName: grpc}]
`

// The registry the control plane reads carries the routes as written,
// through JSON: the core group "" and a weight of 0 are not lost, and
// each route has the time it was applied as its creation time.
func TestRegistryCarriesRoutes(t *testing.T) {
	r := testRuntime(t, routedMesh)
	r.mu.Lock()
	err := r.writeRegistryLocked()
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(r.cfg.StateDir, registryFile))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := discovery.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.HTTPRoutes) != 1 || len(snap.GRPCRoutes) != 1 {
		t.Fatalf("registry routes: %d HTTP, %d gRPC; want 1 and 1", len(snap.HTTPRoutes), len(snap.GRPCRoutes))
	}
	hr := snap.HTTPRoutes[0]
	if g := hr.Spec.ParentRefs[0].Group; g == nil || *g != "" {
		t.Errorf("parentRefs[0].group = %v, want a pointer to \"\"", g)
	}
	if w := hr.Spec.Rules[0].BackendRefs[1].Weight; w == nil || *w != 0 {
		t.Errorf("backendRefs[1].weight = %v, want a pointer to 0", w)
	}
	if hr.CreationTimestamp.IsZero() || snap.GRPCRoutes[0].CreationTimestamp.IsZero() {
		t.Errorf("creation times %v and %v, want the times they were applied", hr.CreationTimestamp, snap.GRPCRoutes[0].CreationTimestamp)
	}
	if a := r.desired.HTTPRoutes()[0]; !a.CreationTimestamp.IsZero() {
		t.Errorf("the applied route itself was changed: creation time %v", a.CreationTimestamp)
	}
}

// `trellis get httproutes` reads each route's status through the API: a
// backend in another namespace is refused, the GRPCRoute is accepted on
// its port, and a route whose Service does not exist is listed, not
// accepted.
func TestRoutesThroughAPI(t *testing.T) {
	r := testRuntime(t, routedMesh+`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: lost}
spec:
  parentRefs: [{group: "", kind: Service, name: nowhere}]
`)
	api, err := r.serveAPI()
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	routes, err := NewClient(r.cfg.StateDir).Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rt := range routes {
		var conds []string
		for _, p := range rt.Status.Parents {
			for _, c := range p.Conditions {
				conds = append(conds, c.Type+"="+string(c.Status)+"/"+c.Reason)
			}
		}
		got[rt.Kind+" "+rt.Namespace+"/"+rt.Name] = strings.Join(conds, ",")
		if rt.Created.IsZero() {
			t.Errorf("%s %s/%s has no creation time", rt.Kind, rt.Namespace, rt.Name)
		}
	}
	want := map[string]string{
		"HTTPRoute db/split":     "Accepted=True/Accepted,ResolvedRefs=True/ResolvedRefs",
		"HTTPRoute default/lost": "Accepted=False/NoMatchingParent,ResolvedRefs=True/ResolvedRefs",
		"GRPCRoute db/rpc":       "Accepted=True/Accepted,ResolvedRefs=True/ResolvedRefs",
	}
	if !maps.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
}
