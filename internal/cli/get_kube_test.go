package cli

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// Denials from every node agent add up per direction and policy; other
// series and other metrics are left out.
func TestAddDenied(t *testing.T) {
	agent := []byte(`# TYPE trellis_netpol_denied_packets_total counter
trellis_netpol_denied_packets_total{direction="ingress",namespace="db",policy="mesh-members-only"} 7
trellis_netpol_denied_packets_total{direction="egress",namespace="db",policy="mesh-members-only"} 2
# TYPE trellis_netpol_rules gauge
trellis_netpol_rules 12
`)
	sums := map[string]uint64{}
	for range 2 {
		if err := addDenied(sums, agent); err != nil {
			t.Fatal(err)
		}
	}
	if sums["ingress/db/mesh-members-only"] != 14 || sums["egress/db/mesh-members-only"] != 4 || len(sums) != 2 {
		t.Errorf("sums = %v", sums)
	}
	if err := addDenied(sums, []byte("not metrics {")); err == nil {
		t.Error("garbage from an agent was taken as metrics")
	}
}

func TestPolicyTypesDefault(t *testing.T) {
	for _, c := range []struct {
		spec networkingv1.NetworkPolicySpec
		want int
	}{
		{networkingv1.NetworkPolicySpec{}, 1},
		{networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}}, 2},
		{networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}, 1},
	} {
		if got := policyTypes(c.spec); len(got) != c.want {
			t.Errorf("policyTypes(%+v) = %v", c.spec, got)
		}
	}
}
