package manifest

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The Gateway API versions a route may carry, the first preferred. The
// older ones have the same fields as v1 for what Trellis reads.
var (
	httpRouteVersions = []string{"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"}
	grpcRouteVersions = []string{"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"}
)

// gatewayObject is a Gateway API route as written. Status is accepted so
// that `kubectl get -o yaml` output loads, and ignored, as kubectl apply
// ignores it: Trellis computes a route's status itself.
type gatewayObject[S any] struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              S               `json:"spec"`
	Status            json.RawMessage `json:"status,omitempty"`
}

// decodeHTTPRoute decodes an HTTPRoute strictly. A route that decodes is
// kept even when it is invalid per the Gateway API: its status says why,
// and it changes nothing in traffic.
func decodeHTTPRoute(doc []byte) (catalog.Ref, any, error) {
	var o gatewayObject[catalog.HTTPRouteSpec]
	if err := strict(doc, &o, "HTTPRoute (gateway.networking.k8s.io/v1)"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindHTTPRoute, Namespace: m.Namespace, Name: m.Name}
	return ref, &catalog.HTTPRoute{Meta: m, Spec: o.Spec}, nil
}

// decodeGRPCRoute decodes a GRPCRoute as decodeHTTPRoute does an HTTPRoute.
func decodeGRPCRoute(doc []byte) (catalog.Ref, any, error) {
	var o gatewayObject[catalog.GRPCRouteSpec]
	if err := strict(doc, &o, "GRPCRoute (gateway.networking.k8s.io/v1)"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindGRPCRoute, Namespace: m.Namespace, Name: m.Name}
	return ref, &catalog.GRPCRoute{Meta: m, Spec: o.Spec}, nil
}

// DecodeHTTPRoute decodes one HTTPRoute with the rules of a manifest
// file, for sources that read them elsewhere (the Kubernetes API server).
func DecodeHTTPRoute(doc []byte) (*catalog.HTTPRoute, error) {
	return decodeAs[*catalog.HTTPRoute](doc, "an HTTPRoute")
}

// DecodeGRPCRoute decodes one GRPCRoute, as DecodeHTTPRoute.
func DecodeGRPCRoute(doc []byte) (*catalog.GRPCRoute, error) {
	return decodeAs[*catalog.GRPCRoute](doc, "a GRPCRoute")
}
