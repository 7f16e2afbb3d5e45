package manifest

import (
	"fmt"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
)

// authorizationPolicy is Istio's AuthorizationPolicy, written under our
// group security.trellis.io/v1 or Istio's (v1, v1beta1): the same object.
type authorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              catalog.AuthorizationSpec `json:"spec"`
}

// DryRunAnnotations put a policy in dry run: Istio's, and ours.
var DryRunAnnotations = []string{"istio.io/dry-run", "trellis.io/dry-run"}

func decodeAuthorizationPolicy(doc []byte) (catalog.Ref, any, error) {
	var o authorizationPolicy
	if err := strict(doc, &o, "AuthorizationPolicy"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindAuthorizationPolicy, Namespace: m.Namespace, Name: m.Name}
	ap := &catalog.AuthorizationPolicy{Meta: m, Spec: o.Spec}
	for _, a := range DryRunAnnotations {
		v, ok := m.Annotations[a]
		if !ok {
			continue
		}
		dry, err := strconv.ParseBool(v)
		if err != nil {
			return ref, nil, fmt.Errorf("annotation %s: %q is not a boolean: write \"true\" or \"false\"", a, v)
		}
		ap.DryRun = ap.DryRun || dry
	}
	if err := authz.Check(authz.FromCatalog(ap)); err != nil {
		return ref, nil, fmt.Errorf("spec: %w", err)
	}
	return ref, ap, nil
}

// DecodeAuthorizationPolicy decodes one AuthorizationPolicy (YAML or
// JSON, in any of the accepted apiVersions) with the rules of a manifest
// file, for sources that read them elsewhere (the Kubernetes API server).
func DecodeAuthorizationPolicy(doc []byte) (*catalog.AuthorizationPolicy, error) {
	return decodeAs[*catalog.AuthorizationPolicy](doc, "an AuthorizationPolicy")
}

// decodeAs decodes one document that must be of the kind T holds.
func decodeAs[T any](doc []byte, what string) (T, error) {
	var zero T
	_, obj, err := decodeDocument(doc)
	if err != nil {
		return zero, err
	}
	o, ok := obj.(T)
	if !ok {
		return zero, fmt.Errorf("not %s", what)
	}
	return o, nil
}
