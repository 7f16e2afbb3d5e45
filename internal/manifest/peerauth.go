package manifest

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The documented subset of Istio's security.istio.io PeerAuthentication:
// selector.matchLabels, mtls.mode and portLevelMtls. Written under our own
// group security.trellis.io/v1; manifests written for Istio
// (security.istio.io/v1 or v1beta1) are accepted as the same objects.
type peerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector *struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector,omitempty"`
		MTLS *struct {
			Mode string `json:"mode"`
		} `json:"mtls,omitempty"`
		PortLevelMTLS map[uint32]struct {
			Mode string `json:"mode"`
		} `json:"portLevelMtls,omitempty"`
	} `json:"spec"`
}

// peerAuthVersions are the apiVersions a PeerAuthentication (and an
// AuthorizationPolicy) may carry.
var peerAuthVersions = []string{"security.trellis.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1"}

func decodePeerAuthentication(doc []byte) (catalog.Ref, any, error) {
	var o peerAuthentication
	if err := strict(doc, &o, "PeerAuthentication"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindPeerAuthentication, Namespace: m.Namespace, Name: m.Name}
	pa := &catalog.PeerAuthentication{Meta: m, Mode: catalog.MTLSUnset}
	if s := o.Spec.Selector; s != nil {
		pa.Selector = s.MatchLabels
		if len(pa.Selector) == 0 {
			return ref, nil, fmt.Errorf("spec.selector.matchLabels is empty; omit selector to cover the namespace")
		}
	}
	var err error
	if o.Spec.MTLS != nil {
		if pa.Mode, err = mtlsMode(o.Spec.MTLS.Mode, "spec.mtls.mode"); err != nil {
			return ref, nil, err
		}
	}
	for port, pm := range o.Spec.PortLevelMTLS {
		if port == 0 || port > 65535 {
			return ref, nil, fmt.Errorf("spec.portLevelMtls: port %d is out of range 1-65535", port)
		}
		if pa.Selector == nil {
			return ref, nil, fmt.Errorf("spec.portLevelMtls needs a selector (as in Istio)")
		}
		mode, err := mtlsMode(pm.Mode, fmt.Sprintf("spec.portLevelMtls[%d].mode", port))
		if err != nil {
			return ref, nil, err
		}
		if pa.PortModes == nil {
			pa.PortModes = map[uint32]catalog.MTLSMode{}
		}
		pa.PortModes[port] = mode
	}
	return ref, pa, nil
}

func mtlsMode(s, field string) (catalog.MTLSMode, error) {
	switch m := catalog.MTLSMode(s); m {
	case "", catalog.MTLSUnset:
		return catalog.MTLSUnset, nil
	case catalog.MTLSPermissive, catalog.MTLSStrict:
		return m, nil
	case "DISABLE":
		return "", fmt.Errorf("%s DISABLE is not supported: use PERMISSIVE", field)
	}
	return "", fmt.Errorf("%s %q: use STRICT, PERMISSIVE or UNSET", field, s)
}

// DecodePeerAuthentication decodes one PeerAuthentication (YAML or JSON, in
// any of the accepted apiVersions) with the rules of a manifest file, for
// sources that read them elsewhere (the Kubernetes API server).
func DecodePeerAuthentication(doc []byte) (*catalog.PeerAuthentication, error) {
	return decodeAs[*catalog.PeerAuthentication](doc, "a PeerAuthentication")
}
