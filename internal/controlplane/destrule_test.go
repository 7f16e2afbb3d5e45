package controlplane

import (
	"net/netip"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// A DestinationRule of the proxy's own namespace for another namespace's
// Service changes that Service only as the proxy's namespace sees it; the
// incremental update must still re-send the Service when the rule is
// added, changed and removed.
func TestDestinationRuleChangesAreStreamed(t *testing.T) {
	r := newRig(t)
	r.snap.Namespaces = append(r.snap.Namespaces, &catalog.Namespace{Meta: catalog.Meta{Name: "db"}})
	r.snap.Services = append(r.snap.Services, &catalog.Service{Meta: catalog.Meta{Namespace: "db", Name: "store"},
		ClusterIP: netip.MustParseAddr("10.201.0.2"), Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 80, TargetPort: 80}}})
	r.write()
	got := runProxy(t, r, "a")
	store := func(c *meshpb.ProxyConfig) *meshpb.Service {
		for _, s := range c.GetServices() {
			if s.GetNamespace() == "db" && s.GetName() == "store" {
				return s
			}
		}
		return nil
	}
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return store(c) != nil })

	rule := func(simple string) {
		r.snap.DestinationRules = []*catalog.DestinationRule{{Meta: catalog.Meta{Namespace: "web", Name: "store-policy"},
			Spec: catalog.DestinationRuleSpec{Host: "store.db", TrafficPolicy: &catalog.TrafficPolicy{
				LoadBalancer: &catalog.LoadBalancerSettings{Simple: simple}}}}}
		r.write()
	}
	rule(catalog.LBRoundRobin)
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool {
		s := store(c)
		return s.GetLoadBalancing() == meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN && s.GetTrafficPolicy().GetSource() == "web/store-policy"
	})
	rule(catalog.LBLeastRequest)
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool {
		return store(c).GetLoadBalancing() == meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST
	})
	r.snap.DestinationRules = nil
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool {
		s := store(c)
		return s.GetLoadBalancing() == meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA && s.GetTrafficPolicy() == nil
	})
}
