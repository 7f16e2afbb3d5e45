package balancer

// leastRequest picks two endpoints at random and takes the one with fewer
// requests in flight (Envoy's least_request with two choices); on a tie, the
// one picked less recently.
type leastRequest struct{}

var _ Picker = leastRequest{}

func (leastRequest) Pick(eps []*Endpoint) *Endpoint {
	a, b := twoRandom(eps)
	if b == nil {
		return a
	}
	switch ia, ib := a.inflight.Load(), b.inflight.Load(); {
	case ia < ib:
		return a
	case ib < ia:
		return b
	}
	return lessRecent(a, b)
}
