package balancer

import (
	"math"
	"math/rand/v2"
	"time"
)

// peakEWMA picks two endpoints at random and takes the one with the lower
// cost (peak-EWMA latency times in-flight requests + 1), as Linkerd does.
// Costs within costTolerance of each other count as equal and the endpoint
// picked less recently wins: measurement noise between equally fast
// endpoints must not send requests to whichever happened to measure
// fastest, so equal endpoints share the load evenly, while a really slower
// or busier endpoint still loses.
type peakEWMA struct{}

var _ Picker = peakEWMA{}

// costTolerance is the relative cost difference treated as noise.
const costTolerance = 0.25

// probeAfter times the number of endpoints is how many picks an endpoint
// may go without being chosen before it is probed: a really slow endpoint
// then gets about 1/(probeAfter × endpoints) of the requests, one that was
// slow only for a moment is measured again soon.
const probeAfter = 5

// costFloor is the absolute cost difference (latency × load, nanoseconds)
// treated as noise: on a busy host, scheduling alone moves sub-millisecond
// latencies by that much.
const costFloor = float64(2 * time.Millisecond)

func (peakEWMA) Pick(eps []*Endpoint) *Endpoint {
	a, b := twoRandom(eps)
	if b == nil {
		return a
	}
	// An endpoint that lost every comparison for a while is tried once, so
	// its estimate follows what it does now rather than what it once did.
	if picks, window := a.b.picks.Load(), uint64(probeAfter*len(eps)); picks > window {
		switch stale := picks - window; {
		case b.lastPick.Load() < stale:
			return b
		case a.lastPick.Load() < stale:
			return a
		}
	}
	ca, cb := a.cost(), b.cost()
	switch {
	case ca > cb*(1+costTolerance) && ca-cb > costFloor:
		return b
	case cb > ca*(1+costTolerance) && cb-ca > costFloor:
		return a
	}
	return lessRecent(a, b)
}

// lessRecent returns whichever of a and b was picked longer ago: the
// tie-break that turns two random choices into an even spread.
func lessRecent(a, b *Endpoint) *Endpoint {
	if b.lastPick.Load() < a.lastPick.Load() {
		return b
	}
	return a
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
