package localmesh

import (
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// RouteStatus is one HTTPRoute, GRPCRoute or VirtualService as `trellis
// get httproutes` (grpcroutes, virtualservices) shows it: the status
// Trellis computes for it, in the Gateway API's shape (one entry per
// parentRef to a Service, or per host of a VirtualService;
// LastTransitionTime is not kept).
type RouteStatus struct {
	Kind      string    `json:"kind"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Created   time.Time `json:"created"`
	// Hosts are a VirtualService's hosts as written: its parents are
	// the Services they name, in order, so the CLI can show the host
	// beside each.
	Hosts  []string            `json:"hosts,omitempty"`
	Status catalog.RouteStatus `json:"status"`
}

// Routes lists every route, HTTPRoutes, GRPCRoutes then VirtualServices,
// each by namespace and name, with the status proxycfg.RouteStatus
// computes from the mesh the control plane sees.
func (r *Runtime) Routes() []RouteStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	snap := r.snapshotLocked()
	hosts := map[catalog.Ref][]string{}
	for _, vs := range snap.VirtualServices {
		hosts[catalog.Ref{Kind: catalog.KindVirtualService, Namespace: vs.Namespace, Name: vs.Name}] = vs.Spec.Hosts
	}
	out := []RouteStatus{}
	for _, st := range proxycfg.RouteStatus(snap) {
		parents := st.Parents
		if parents == nil {
			parents = []catalog.RouteParentStatus{} // the Gateway API's field is a list, never null
		}
		out = append(out, RouteStatus{Kind: string(st.Route.Kind), Namespace: st.Route.Namespace, Name: st.Route.Name,
			Created: r.created[st.Route], Hosts: hosts[st.Route], Status: catalog.RouteStatus{Parents: parents}})
	}
	return out
}
