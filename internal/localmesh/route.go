package localmesh

import (
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// RouteStatus is one HTTPRoute or GRPCRoute as `trellis get httproutes`
// shows it: the status Trellis computes for it, in the Gateway API's
// shape (one entry per parentRef to a Service; LastTransitionTime is not
// kept).
type RouteStatus struct {
	Kind      string              `json:"kind"`
	Namespace string              `json:"namespace"`
	Name      string              `json:"name"`
	Created   time.Time           `json:"created"`
	Status    catalog.RouteStatus `json:"status"`
}

// Routes lists every route, HTTPRoutes then GRPCRoutes, each by
// namespace and name, with the status proxycfg.RouteStatus computes from
// the mesh the control plane sees.
func (r *Runtime) Routes() []RouteStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []RouteStatus{}
	for _, st := range proxycfg.RouteStatus(r.snapshotLocked()) {
		parents := st.Parents
		if parents == nil {
			parents = []catalog.RouteParentStatus{} // the Gateway API's field is a list, never null
		}
		out = append(out, RouteStatus{Kind: string(st.Route.Kind), Namespace: st.Route.Namespace, Name: st.Route.Name,
			Created: r.created[st.Route], Status: catalog.RouteStatus{Parents: parents}})
	}
	return out
}
