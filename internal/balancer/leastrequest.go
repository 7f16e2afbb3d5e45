package balancer

// leastRequest picks two endpoints at random and takes the one with fewer
// requests in flight (Envoy's least_request with two choices).
type leastRequest struct{}

var _ Picker = leastRequest{}

func (leastRequest) Pick(eps []*Endpoint) *Endpoint {
	a, b := twoRandom(eps)
	if b == nil || a.inflight.Load() <= b.inflight.Load() {
		return a
	}
	return b
}
