package manifest

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
)

// requestAuthentication is Istio's RequestAuthentication, under the same
// groups as the other security policies.
type requestAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              catalog.RequestAuthenticationSpec `json:"spec"`
}

func decodeRequestAuthentication(doc []byte) (catalog.Ref, any, error) {
	var o requestAuthentication
	if err := strict(doc, &o, "RequestAuthentication"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindRequestAuthentication, Namespace: m.Namespace, Name: m.Name}
	scope := authz.Scope{Namespace: m.Namespace, Selector: o.Spec.Selector, TargetRefs: o.Spec.TargetRefs}
	if _, err := scope.Applies(authz.Workload{Namespace: m.Namespace}, nil); err != nil {
		return ref, nil, fmt.Errorf("spec: %w", err)
	}
	if err := authn.Check(o.Spec); err != nil {
		return ref, nil, fmt.Errorf("spec: %w", err)
	}
	return ref, &catalog.RequestAuthentication{Meta: m, Spec: o.Spec}, nil
}

// DecodeRequestAuthentication decodes one RequestAuthentication with the
// rules of a manifest file, for sources that read them elsewhere.
func DecodeRequestAuthentication(doc []byte) (*catalog.RequestAuthentication, error) {
	return decodeAs[*catalog.RequestAuthentication](doc, "a RequestAuthentication")
}
