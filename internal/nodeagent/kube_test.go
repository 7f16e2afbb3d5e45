package nodeagent

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The tables are IPv4: IPv6 blocks are left out without ever widening what
// a policy allows.
func TestIPv4Only(t *testing.T) {
	v4 := networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}
	v6 := networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "fd00::/8"}}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{v4, v6}}, {From: []networkingv1.NetworkPolicyPeer{v6}}, {}},
			Egress:  []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{v6}}},
		}}
	got := ipv4Only(np)
	if len(got.Spec.Ingress) != 2 || len(got.Spec.Ingress[0].From) != 1 || got.Spec.Ingress[0].From[0].IPBlock.CIDR != "10.0.0.0/8" || len(got.Spec.Ingress[1].From) != 0 {
		t.Errorf("ingress = %+v, want the IPv4 block kept, the IPv6-only rule gone and the any-peer rule kept", got.Spec.Ingress)
	}
	if len(got.Spec.Egress) != 0 {
		t.Errorf("egress = %+v, want the IPv6-only rule gone", got.Spec.Egress)
	}
	if ingress, egress := directions(got); !ingress || !egress {
		t.Errorf("directions after = %v, %v; want both still isolated (egress now allows nothing)", ingress, egress)
	}
	if len(np.Spec.Ingress[0].From) != 2 {
		t.Error("ipv4Only changed its argument")
	}
}
