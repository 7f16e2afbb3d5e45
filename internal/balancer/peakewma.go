package balancer

import (
	"math"
	"math/rand/v2"
	"time"
)

// peakEWMA picks two endpoints at random and takes the one with the lower
// cost (peak-EWMA latency times in-flight requests + 1), as Linkerd does.
type peakEWMA struct{}

var _ Picker = peakEWMA{}

func (peakEWMA) Pick(eps []*Endpoint) *Endpoint {
	a, b := twoRandom(eps)
	if b == nil || a.cost() <= b.cost() {
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
