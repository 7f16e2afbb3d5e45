package balancer

import "sync/atomic"

// roundRobin takes endpoints in turn.
type roundRobin struct {
	next atomic.Uint64
}

var _ Picker = (*roundRobin)(nil)

func (r *roundRobin) Pick(eps []*Endpoint) *Endpoint {
	return eps[(r.next.Add(1)-1)%uint64(len(eps))]
}
