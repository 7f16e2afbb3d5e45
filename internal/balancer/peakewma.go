package balancer

import (
	"math"
	"math/rand/v2"
	"time"
)

// peakEWMA picks two endpoints at random and takes the one with the lower
// cost (peak-EWMA latency times in-flight requests + 1), as Linkerd does.
// Costs within costTolerance of each other count as equal and the first
// (random) one wins: measurement noise between equally fast endpoints must
// not send every request to whichever happened to measure fastest, while a
// really slower or busier endpoint still loses.
type peakEWMA struct{}

var _ Picker = peakEWMA{}

// costTolerance is the relative cost difference treated as noise.
const costTolerance = 0.25

func (peakEWMA) Pick(eps []*Endpoint) *Endpoint {
	a, b := twoRandom(eps)
	if b == nil {
		return a
	}
	ca, cb := a.cost(), b.cost()
	if ca <= cb*(1+costTolerance) {
		return a
	}
	return b
}

// twoRandom returns two distinct random endpoints (b nil when only one).
func twoRandom(eps []*Endpoint) (a, b *Endpoint) {
	if len(eps) == 1 {
		return eps[0], nil
	}
	i := rand.IntN(len(eps))
	j := rand.IntN(len(eps) - 1)
	if j >= i {
		j++
	}
	return eps[i], eps[j]
}

func decayWeight(elapsed time.Duration) float64 {
	return math.Exp(-float64(elapsed) / float64(ewmaDecay))
}
