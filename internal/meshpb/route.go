package meshpb

import (
	"cmp"
	"strings"
)

// Key names a route in updates (ConfigUpdate.route_remove):
// "kind/namespace/name".
func (r *Route) Key() string { return r.GetKind() + "/" + r.GetNamespace() + "/" + r.GetName() }

// routeKinds are the kinds of route in the order a ProxyConfig lists them.
var routeKinds = []string{"HTTPRoute", "GRPCRoute", "VirtualService"}

// CompareRoutes orders routes as the control plane lists them in a
// ProxyConfig: by kind (HTTPRoute, GRPCRoute, VirtualService, then any
// other), then namespace and name.
func CompareRoutes(a, b *Route) int {
	rank := func(r *Route) int {
		for i, k := range routeKinds {
			if r.GetKind() == k {
				return i
			}
		}
		return len(routeKinds)
	}
	return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a.GetKind(), b.GetKind()),
		strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
}
