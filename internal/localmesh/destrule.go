package localmesh

import (
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// DestinationRuleStatus is one DestinationRule as `trellis get
// destinationrules` shows it: its spec as applied (Istio's field names),
// and when it was applied.
type DestinationRuleStatus struct {
	Namespace string                      `json:"namespace"`
	Name      string                      `json:"name"`
	Created   time.Time                   `json:"created"`
	Spec      catalog.DestinationRuleSpec `json:"spec"`
}

// DestinationRules lists every DestinationRule by namespace and name.
func (r *Runtime) DestinationRules() []DestinationRuleStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []DestinationRuleStatus{}
	for _, dr := range r.desired.DestinationRules() {
		ref := catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: dr.Namespace, Name: dr.Name}
		out = append(out, DestinationRuleStatus{Namespace: dr.Namespace, Name: dr.Name, Created: r.created[ref], Spec: dr.Spec})
	}
	return out
}
