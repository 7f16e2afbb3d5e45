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

const ruledMesh = twoServices + `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: alpha, namespace: db}
spec:
  host: graph-alpha
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 100}}
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}
`

// The registry carries the rules as written, through JSON: an explicit 0
// stays set; the API lists them with the time they were applied.
func TestRegistryAndAPICarryDestinationRules(t *testing.T) {
	r := testRuntime(t, ruledMesh)
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
	if len(snap.DestinationRules) != 1 {
		t.Fatalf("registry holds %d DestinationRules, want 1", len(snap.DestinationRules))
	}
	od := snap.DestinationRules[0].Spec.TrafficPolicy.OutlierDetection
	if od.Consecutive5xxErrors == nil || *od.Consecutive5xxErrors != 0 || *od.ConsecutiveGatewayErrors != 3 {
		t.Errorf("outlierDetection = %+v, want 5xx set to 0 and gateway 3", od)
	}

	api, err := r.serveAPI()
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drs, err := NewClient(r.cfg.StateDir).DestinationRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(drs) != 1 || drs[0].Namespace != "db" || drs[0].Name != "alpha" || drs[0].Spec.Host != "graph-alpha" || drs[0].Created.IsZero() {
		t.Errorf("DestinationRules() = %+v, want db/alpha for graph-alpha with its creation time", drs)
	}
}

// A second rule for the same Service and namespace, applied later, is
// refused naming both, and nothing changes.
func TestApplyRefusesASecondRule(t *testing.T) {
	r := testRuntime(t, ruledMesh)
	_, err := r.Apply([]manifest.Source{{Name: "more.yaml", Data: []byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: alpha-too, namespace: db}
spec: {host: graph-alpha.db.svc.cluster.local}
`)}})
	if err == nil || !strings.Contains(err.Error(), "more.yaml: DestinationRule db/alpha-too:") || !strings.Contains(err.Error(), "DestinationRule db/alpha (m.yaml)") {
		t.Errorf("Apply() error = %v, want it to name db/alpha-too and db/alpha", err)
	}
	if n := len(r.DestinationRules()); n != 1 {
		t.Errorf("%d rules after a refused apply, want 1", n)
	}
}
