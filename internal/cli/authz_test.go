package cli

import (
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy"
)

// A suggestion allows what was seen and no more: a caller that sprayed
// paths (kept by its sidecar as "*") is not allowed every path, and many
// paths become their first segments.
func TestSuggestionNeverWidens(t *testing.T) {
	wa := &workloadAccess{config: &meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha",
		Labels: map[string]string{"app": "alpha", "pod-template-hash": "x"}}}}
	for i := range 20 {
		wa.access = append(wa.access, proxy.ObservedAccess{Principal: "cluster.local/ns/web/sa/web", Port: 8080, Method: "GET", Path: fmt.Sprintf("/items/%d", i)})
	}
	wa.access = append(wa.access,
		proxy.ObservedAccess{Principal: "", Port: 8080, Method: "GET", Path: "/health"},
		proxy.ObservedAccess{Principal: "", Port: 8080, Method: "GET", Path: "*"},
		proxy.ObservedAccess{Principal: "", Port: 8080, Method: "POST", Path: "*"},
		proxy.ObservedAccess{Principal: "cluster.local/ns/db/sa/zero", Port: 5432})
	doc, notes, err := suggestion(wa)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := yaml.Marshal(doc)
	got := string(out)
	for _, want := range []string{"/items/*", "/health", "cluster.local/ns/db/sa/zero", `"5432"`, "app: alpha"} {
		if !strings.Contains(got, want) {
			t.Errorf("suggestion has no %s:\n%s", want, got)
		}
	}
	for _, bad := range []string{"POST", "pod-template-hash", "'*'\n        ports"} {
		if strings.Contains(got, bad) {
			t.Errorf("suggestion has %q:\n%s", bad, got)
		}
	}
	if len(notes) != 2 {
		t.Errorf("notes %q, want one for each sprayed method", notes)
	}
}
