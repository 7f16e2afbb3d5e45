package manifest

import (
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// virtualServiceVersions are the apiVersions of Istio's VirtualService, as
// DestinationRule's: the older ones have the same fields for what Trellis
// reads.
var virtualServiceVersions = destinationRuleVersions

// virtualService is an Istio VirtualService as written. Status is
// accepted, so that `kubectl get -o yaml` output loads, and ignored.
type virtualService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              catalog.VirtualServiceSpec `json:"spec"`
	Status            json.RawMessage            `json:"status,omitempty"`
}

// decodeVirtualService decodes a VirtualService strictly: a field Istio
// does not have is an error naming it. One that decodes is kept even when
// Trellis refuses some of it (a subset, tcp routes, a bad regular
// expression): as for an HTTPRoute, its status says what is refused
// (internal/route), and the refused rules change nothing in traffic, so a
// manifest shared with Istio loads whole and says what it lacks.
func decodeVirtualService(doc []byte) (catalog.Ref, any, error) {
	var o virtualService
	if err := strict(doc, &o, "VirtualService (networking.istio.io/v1)"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindVirtualService, Namespace: m.Namespace, Name: m.Name}
	// Every proxy's config looks at each host of every VirtualService,
	// and carries the http routes of those that apply: bounded, as the
	// Gateway API bounds a route's parents and rules.
	switch {
	case len(o.Spec.Hosts) > maxVSHosts:
		return ref, nil, fmt.Errorf("spec.hosts: %d hosts, more than %d: split the VirtualService", len(o.Spec.Hosts), maxVSHosts)
	case len(o.Spec.HTTP) > maxVSHTTP:
		return ref, nil, fmt.Errorf("spec.http: %d routes, more than %d: split the VirtualService", len(o.Spec.HTTP), maxVSHTTP)
	}
	return ref, &catalog.VirtualService{Meta: m, Spec: o.Spec}, nil
}

// The most hosts and http routes of a VirtualService (the second as
// internal/route's limit).
const (
	maxVSHosts = 64
	maxVSHTTP  = 64
)

// DecodeVirtualService decodes one VirtualService, as DecodeHTTPRoute.
func DecodeVirtualService(doc []byte) (*catalog.VirtualService, error) {
	return decodeAs[*catalog.VirtualService](doc, "a VirtualService")
}
