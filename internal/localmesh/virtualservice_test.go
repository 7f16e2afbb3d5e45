package localmesh

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/discovery"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

// twoServices' graph-alpha with an abort on a prefix, its older
// versions' fields included, and a host that names no Service.
const vsMesh = twoServices + `---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: alpha, namespace: db}
spec:
  hosts: [graph-alpha, missing]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: graph-alpha, port: {number: 8080}}}]
  - route: [{destination: {host: graph-alpha, port: {number: 8080}}, weight: 100}]
`

// The registry carries VirtualServices as written, through JSON, with the
// time they were applied; the API lists each with its hosts and a status
// per host; apply names them as kubectl does.
func TestRegistryAndAPICarryVirtualServices(t *testing.T) {
	r := testRuntime(t, vsMesh)
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
	if len(snap.VirtualServices) != 1 {
		t.Fatalf("registry holds %d VirtualServices, want 1", len(snap.VirtualServices))
	}
	vs := snap.VirtualServices[0]
	if a := vs.Spec.HTTP[0].Fault.Abort; a.HTTPStatus != 418 || a.Percentage.Value != 100 || *vs.Spec.HTTP[1].Route[0].Weight != 100 {
		t.Errorf("http = %+v, want the abort and the weight as written", vs.Spec.HTTP)
	}
	if vs.CreationTimestamp.IsZero() {
		t.Error("the registry's VirtualService has no creation time")
	}

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
	if len(routes) != 1 || routes[0].Kind != "VirtualService" || strings.Join(routes[0].Hosts, ",") != "graph-alpha,missing" || routes[0].Created.IsZero() {
		t.Fatalf("Routes() = %+v, want db/alpha with its hosts and creation time", routes)
	}
	var got []string
	for _, p := range routes[0].Status.Parents {
		got = append(got, p.ParentRef.Namespace+"/"+p.ParentRef.Name+" "+p.Conditions[0].Reason)
	}
	if g := strings.Join(got, ", "); g != "db/graph-alpha Accepted, db/missing NoMatchingParent" {
		t.Errorf("parents = %s, want graph-alpha accepted and missing NoMatchingParent", g)
	}
}

// A second VirtualService for the host, applied later, loses to the
// first, as in Istio; apply reports it as kubectl does.
func TestApplyASecondVirtualService(t *testing.T) {
	r := testRuntime(t, vsMesh)
	res, err := r.Apply([]manifest.Source{{Name: "more.yaml", Data: []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: aaa-later, namespace: db}
spec:
  hosts: [graph-alpha.db.svc.cluster.local]
  http: [{route: [{destination: {host: web.default}}]}]
`)}})
	if err != nil || strings.Join(res.Lines, ";") != "virtualservice.networking.istio.io/db/aaa-later created" {
		t.Fatalf("Apply() = %+v, %v; want the VirtualService created", res, err)
	}
	for _, rt := range r.Routes() {
		want := map[string]string{"alpha": "Accepted", "aaa-later": "Conflicted"}[rt.Name]
		if got := rt.Status.Parents[0].Conditions[0].Reason; got != want {
			t.Errorf("VirtualService %s on graph-alpha: %s, want %s", rt.Name, got, want)
		}
	}
}
