package proxycfg

import (
	"fmt"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// PeerAuthentication precedence, broadest first: PERMISSIVE by default, a
// mesh-wide policy in a root namespace (Trellis's ahead of Istio's), the
// pod's namespace, then its workload; UNSET inherits.
func TestInboundPolicyPrecedence(t *testing.T) {
	pa := func(ns, name, selector, mode string) string {
		sel := ""
		if selector != "" {
			sel = "\n  selector: {matchLabels: {app: " + selector + "}}"
		}
		return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: %s, namespace: %s}\nspec:%s\n  mtls: {mode: %s}\n---\n", name, ns, sel, mode)
	}
	const (
		strict     = meshpb.MTLSMode_MTLS_MODE_STRICT
		permissive = meshpb.MTLSMode_MTLS_MODE_PERMISSIVE
	)
	for _, tc := range []struct {
		name     string
		policies string
		want     meshpb.MTLSMode
	}{
		{"default", "", permissive},
		{"mesh-wide (Istio's root namespace)", pa("istio-system", "default", "", "STRICT"), strict},
		{"mesh-wide (Trellis's root namespace)", pa("trellis-system", "default", "", "STRICT"), strict},
		{"Trellis's root ahead of Istio's", pa("trellis-system", "default", "", "PERMISSIVE") + pa("istio-system", "default", "", "STRICT"), permissive},
		{"namespace over mesh", pa("trellis-system", "default", "", "STRICT") + pa("db", "default", "", "PERMISSIVE"), permissive},
		{"namespace UNSET inherits the mesh", pa("trellis-system", "default", "", "STRICT") + pa("db", "default", "", "UNSET"), strict},
		{"workload over namespace", pa("db", "default", "", "STRICT") + pa("db", "alpha", "alpha", "PERMISSIVE"), permissive},
		{"another namespace's policy", pa("web", "default", "", "STRICT"), permissive},
		{"a selector in the root namespace is not mesh-wide", pa("trellis-system", "alpha", "alpha", "STRICT"), permissive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\n" +
				"apiVersion: v1\nkind: Namespace\nmetadata: {name: trellis-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n" + tc.policies
			set, err := manifest.Parse([]manifest.Source{{Name: "m.yaml", Data: []byte(doc)}})
			if err != nil {
				t.Fatal(err)
			}
			pod := &catalog.Pod{Meta: catalog.Meta{Name: "alpha-0", Namespace: "db", Labels: map[string]string{"app": "alpha"}}}
			if got := InboundPolicy(set.PeerAuthentications(), pod).GetMode(); got != tc.want {
				t.Errorf("mode = %v, want %v", got, tc.want)
			}
		})
	}
}
