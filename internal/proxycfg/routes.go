package proxycfg

import (
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/route"
)

// Routes are the routes the proxy of a pod in namespace ns needs, given
// the services it sees: every HTTPRoute and GRPCRoute of snap with a
// parentRef (group "", kind Service) to one of services, and every
// VirtualService with a host naming one, that is a producer route (in the
// Service's namespace) or a consumer route of ns. Other namespaces'
// consumer routes do not apply to this client and are left out. Routes go
// as written, valid or not: the proxy compiles them (internal/route),
// which drops what RouteStatus reports as invalid. The order is snap's:
// HTTPRoutes, GRPCRoutes, then VirtualServices, each by namespace and
// name.
func Routes(snap *catalog.Snapshot, ns string, services []*meshpb.Service) ([]*meshpb.Route, error) {
	seen := make(map[string]bool, len(services))
	for _, s := range services {
		seen[ServiceKey(s)] = true
	}
	applies := func(m catalog.Meta, parents []catalog.ParentReference) bool {
		for _, p := range parents {
			if p.Group == nil || *p.Group != "" || p.Kind != "Service" {
				continue
			}
			svcNS := p.Namespace
			if svcNS == "" {
				svcNS = m.Namespace
			}
			if seen[svcNS+"/"+p.Name] && (m.Namespace == svcNS || m.Namespace == ns) {
				return true
			}
		}
		return false
	}
	var rs route.Routes
	for _, r := range snap.HTTPRoutes {
		if applies(r.Meta, r.Spec.ParentRefs) {
			rs.HTTP = append(rs.HTTP, r)
		}
	}
	for _, r := range snap.GRPCRoutes {
		if applies(r.Meta, r.Spec.ParentRefs) {
			rs.GRPC = append(rs.GRPC, r)
		}
	}
	rs.VS = virtualServices(snap.VirtualServices, ns, services)
	return route.ToProto(rs)
}

// virtualServices are those of all with a host naming one of services
// that are producer routes or consumer routes of ns, in all's order.
// Hosts are resolved by route.Routes.AttachedTo, the proxy's own reading,
// so that a VirtualService reaches every proxy that would apply it.
func virtualServices(all []*catalog.VirtualService, ns string, services []*meshpb.Service) []*catalog.VirtualService {
	if len(all) == 0 {
		return nil
	}
	applies := map[*catalog.VirtualService]bool{}
	for _, s := range services {
		for _, vs := range (route.Routes{VS: all}).AttachedTo(s.GetNamespace(), s.GetName()).VS {
			if vs.Namespace == s.GetNamespace() || vs.Namespace == ns {
				applies[vs] = true
			}
		}
	}
	var out []*catalog.VirtualService
	for _, vs := range all {
		if applies[vs] {
			out = append(out, vs)
		}
	}
	return out
}

// RouteStatus is the status of every route of snap, HTTPRoutes,
// GRPCRoutes then VirtualServices in snap's order, as route.Validate
// gives it against RouteConfig(snap). The control plane and `trellis get
// httproutes` (and virtualservices) call it; LastTransitionTime is left zero.
func RouteStatus(snap *catalog.Snapshot) []route.Status {
	rs := route.Routes{HTTP: snap.HTTPRoutes, GRPC: snap.GRPCRoutes, VS: snap.VirtualServices}
	return route.Validate(rs, RouteConfig(snap))
}

// RouteConfig is what routes attach to and send to: the Services of snap
// that have a VIP, each with its TCP ports, named, and the subsets of the
// DestinationRule it carries. These are the services, ports and subsets
// Render gives proxies, so the status a route gets is what proxies do
// with it (but for clients whose own namespace has a rule for the
// Service: theirs has the subsets they see).
func RouteConfig(snap *catalog.Snapshot) route.Config {
	var cfg route.Config
	rules := indexRules(snap)
	for _, svc := range snap.Services {
		if !svc.ClusterIP.IsValid() {
			continue
		}
		s := route.Service{Namespace: svc.Namespace, Name: svc.Name}
		if dr := rules.forService(&meshpb.Service{Namespace: svc.Namespace, Name: svc.Name}); dr != nil {
			s.Rule = dr.Namespace + "/" + dr.Name
			for _, sub := range dr.Spec.Subsets {
				s.Subsets = append(s.Subsets, sub.Name)
			}
		}
		for _, sp := range svc.Ports {
			if sp.Protocol == catalog.TCP {
				s.Ports = append(s.Ports, route.Port{Name: sp.Name, Port: sp.Port})
			}
		}
		cfg.Services = append(cfg.Services, s)
	}
	return cfg
}
