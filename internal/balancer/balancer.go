// Package balancer picks an endpoint for each request: power of two choices
// over peak-EWMA latency by default (as Linkerd), least-request or
// round-robin per service, with outlier ejection of endpoints that refuse
// connections or fail repeatedly.
//
// The proxy imports it; it imports nothing of the project. Endpoint sets are
// immutable snapshots swapped atomically, so Pick takes no lock and an update
// never fails a request in flight.
package balancer

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoEndpoints is returned by Pick when the service has no endpoint.
var ErrNoEndpoints = errors.New("no healthy upstream: the service has no ready endpoints")

// Picker chooses among endpoints. Pick is called from many request
// goroutines at once with a non-empty slice it must not modify; it must not
// block. Each policy is a type of its own in its own file.
type Picker interface {
	Pick(eps []*Endpoint) *Endpoint
}

// Policy names a Picker.
type Policy string

// The policies.
const (
	P2CPeakEWMA  Policy = "p2c-peak-ewma" // the default
	LeastRequest Policy = "least-request"
	RoundRobin   Policy = "round-robin"
)

// NewPicker returns the picker for p; "" means P2CPeakEWMA.
func NewPicker(p Policy) (Picker, error) {
	switch p {
	case "", P2CPeakEWMA:
		return peakEWMA{}, nil
	case LeastRequest:
		return leastRequest{}, nil
	case RoundRobin:
		return &roundRobin{}, nil
	}
	return nil, fmt.Errorf("load-balancing policy %q: use %s, %s or %s", p, P2CPeakEWMA, LeastRequest, RoundRobin)
}

// Outlier configures ejection: after Consecutive failures in a row, or
// ConsecutiveGateway gateway failures in a row, an endpoint is left out
// for BaseEjection times the number of times it was ejected (at most
// MaxEjection), unless MaxEjectionPercent of the endpoints or more are
// out already. The zero value is DefaultOutlier.
type Outlier struct {
	// Consecutive counts failures (Result.Failed); 0: they eject none.
	Consecutive int
	// ConsecutiveGateway counts gateway failures (Result.Gateway); 0:
	// they eject none.
	ConsecutiveGateway int
	BaseEjection       time.Duration
	// MaxEjection bounds an ejection; 0: 5 min or BaseEjection, whichever
	// is longer.
	MaxEjection time.Duration
	// MaxEjectionPercent: an endpoint is ejected only while the share of
	// endpoints out is below it, so one may be whatever their number,
	// unless it is 0.
	MaxEjectionPercent int
}

// DefaultOutlier is the ejection of a service whose traffic policy says
// none: 5 failures in a row, 10 s growing per ejection up to 5 min, and
// every endpoint may be out.
var DefaultOutlier = Outlier{Consecutive: 5, BaseEjection: 10 * time.Second, MaxEjection: 5 * time.Minute, MaxEjectionPercent: 100}

// Balancer is one service's endpoints and policy. Safe for concurrent use.
type Balancer struct {
	picker  Picker
	outlier Outlier
	now     func() time.Time

	eps   atomic.Pointer[[]*Endpoint] // the current set, never modified in place
	picks atomic.Uint64               // stamps Endpoint.lastPick

	mu      sync.Mutex // serialises Update
	ejectMu sync.Mutex // serialises ejections
}

// New returns a balancer with no endpoints.
func New(p Policy, o Outlier) (*Balancer, error) {
	picker, err := NewPicker(p)
	if err != nil {
		return nil, err
	}
	if o == (Outlier{}) {
		o = DefaultOutlier
	}
	if o.BaseEjection <= 0 {
		o.BaseEjection = DefaultOutlier.BaseEjection
	}
	if o.MaxEjection <= 0 {
		o.MaxEjection = max(5*time.Minute, o.BaseEjection)
	}
	b := &Balancer{picker: picker, outlier: o, now: time.Now}
	b.eps.Store(&[]*Endpoint{})
	return b, nil
}

// Update replaces the endpoint set with addrs. Endpoints that stay keep
// their statistics and ejection state; requests in flight to removed ones
// finish normally.
func (b *Balancer) Update(addrs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := map[string]*Endpoint{}
	for _, e := range *b.eps.Load() {
		old[e.Addr] = e
	}
	next := make([]*Endpoint, 0, len(addrs))
	for _, a := range addrs {
		if e, ok := old[a]; ok {
			next = append(next, e)
			continue
		}
		next = append(next, &Endpoint{Addr: a, b: b})
	}
	b.eps.Store(&next)
}

// Endpoints returns the current endpoints.
func (b *Balancer) Endpoints() []*Endpoint { return *b.eps.Load() }

// Pick chooses an endpoint for one request, skipping ejected endpoints
// unless all are ejected (then any is better than none), and those in
// avoid (a retry's earlier attempts) unless no other is left. The caller
// must call Start on it and the returned function when the request ends.
func (b *Balancer) Pick(avoid ...*Endpoint) (*Endpoint, error) {
	all := *b.eps.Load()
	if len(all) == 0 {
		return nil, ErrNoEndpoints
	}
	now := b.now().UnixNano()
	healthy := all
	for i, e := range all {
		if e.ejectedUntil.Load() > now || slices.Contains(avoid, e) {
			// Rare: copy only when someone is left out.
			healthy = make([]*Endpoint, 0, len(all))
			healthy = append(healthy, all[:i]...)
			for _, e2 := range all[i:] {
				if e2.ejectedUntil.Load() <= now && !slices.Contains(avoid, e2) {
					healthy = append(healthy, e2)
				}
			}
			break
		}
	}
	if len(healthy) == 0 && len(avoid) > 0 {
		return b.Pick() // every endpoint was tried: any healthy one again
	}
	if len(healthy) == 0 {
		healthy = all
	}
	e := b.picker.Pick(healthy)
	e.lastPick.Store(b.picks.Add(1))
	return e, nil
}

// Endpoint is one backend and its live statistics.
type Endpoint struct {
	Addr string
	b    *Balancer

	inflight     atomic.Int64
	failures     atomic.Int64 // consecutive
	gateway      atomic.Int64 // consecutive gateway failures
	ejections    atomic.Int64
	ejectedUntil atomic.Int64  // unix nanoseconds
	lastPick     atomic.Uint64 // Balancer.picks when last chosen; 0 never

	ewmaMu   sync.Mutex
	ewma     float64   // guarded by ewmaMu: peak-EWMA latency, nanoseconds
	ewmaTime time.Time // guarded by ewmaMu: last update
	last     float64   // guarded by ewmaMu: the previous sample
}

// Result is how a request to an endpoint ended.
type Result struct {
	// Latency of the request; zero means no sample (for example when it
	// included opening a connection, which says nothing about the
	// endpoint's speed).
	Latency time.Duration
	// Failed is true for a connection failure or a 5xx-class response: what
	// counts toward ejection.
	Failed bool
	// Gateway is true for a connection failure or a 502, 503 or 504
	// response: what counts toward ejection on gateway failures.
	Gateway bool
	// Abandoned is true when the client gave up on the request: it says
	// nothing of the endpoint, and counts neither way.
	Abandoned bool
}

// HTTPResult is the Result of a request answered with code (0 for none)
// or, if connFailed, cut off by its connection.
func HTTPResult(code int, connFailed bool, latency time.Duration) Result {
	return Result{Latency: latency, Failed: connFailed || code >= 500,
		Gateway: connFailed || code >= 502 && code <= 504}
}

// Start records a request as in flight and returns the function to call,
// exactly once, when it ends.
func (e *Endpoint) Start() func(Result) {
	e.inflight.Add(1)
	return func(r Result) {
		e.inflight.Add(-1)
		if r.Abandoned {
			return
		}
		if r.Latency > 0 {
			e.observe(r.Latency)
		}
		if !r.Gateway {
			e.gateway.Store(0)
		}
		if !r.Failed {
			e.failures.Store(0)
			return
		}
		o := &e.b.outlier
		failures, gateway := e.failures.Add(1), int64(0)
		if r.Gateway {
			gateway = e.gateway.Add(1)
		}
		if o.Consecutive > 0 && failures >= int64(o.Consecutive) ||
			o.ConsecutiveGateway > 0 && gateway >= int64(o.ConsecutiveGateway) {
			e.eject()
		}
	}
}

// eject leaves e out for its next ejection's time, if the policy's share
// allows. The count and the ejection are one step, so endpoints failing
// at once cannot all pass the count.
func (e *Endpoint) eject() {
	b := e.b
	b.ejectMu.Lock()
	defer b.ejectMu.Unlock()
	if !b.mayEject() {
		return
	}
	e.failures.Store(0)
	e.gateway.Store(0)
	n := e.ejections.Add(1)
	d := min(time.Duration(n)*b.outlier.BaseEjection, b.outlier.MaxEjection)
	e.ejectedUntil.Store(b.now().Add(d).UnixNano())
}

// mayEject reports whether the share of endpoints out is below the
// policy's MaxEjectionPercent (ejectMu held).
func (b *Balancer) mayEject() bool {
	all := *b.eps.Load()
	now := b.now().UnixNano()
	out := 0
	for _, e := range all {
		if e.ejectedUntil.Load() > now {
			out++
		}
	}
	return out*100 < b.outlier.MaxEjectionPercent*len(all)
}

// InFlight returns the requests in flight to e.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// Ejected reports whether e is currently left out.
func (e *Endpoint) Ejected() bool { return e.ejectedUntil.Load() > e.b.now().UnixNano() }

// ewmaDecay is the time constant of the latency average.
const ewmaDecay = 10 * time.Second

// fastSampleShare is the least share of the way a faster sample moves the
// estimate toward itself, however soon after the previous one it came.
const fastSampleShare = 0.75

// observe folds a latency into the peak-EWMA. A slowdown is taken at once
// once two requests in a row show it; faster samples decay the average over
// ewmaDecay, each moving it at least fastSampleShare of the way. A lone slow
// sample counts as no slower than the one before it: one stray spike (a GC
// pause, a descheduled thread) must not mark an endpoint slow while its
// next answers are fast, whereas a really slow endpoint answers slowly
// every time and turns expensive on its second answer.
func (e *Endpoint) observe(lat time.Duration) {
	now := e.b.now()
	e.ewmaMu.Lock()
	defer e.ewmaMu.Unlock()
	sample := float64(lat)
	if e.ewmaTime.IsZero() {
		e.last = sample
	}
	confirmed := min(sample, e.last)
	e.last = sample
	if confirmed > e.ewma || e.ewmaTime.IsZero() {
		e.ewma = confirmed
	} else {
		w := min(decayWeight(now.Sub(e.ewmaTime)), 1-fastSampleShare)
		e.ewma = e.ewma*w + confirmed*(1-w)
	}
	e.ewmaTime = now
}

// cost is what peak-EWMA minimises: latency times the load it would join.
// The latency estimate decays toward zero while no sample arrives (as
// tower's PeakEwma does), so an endpoint that had one slow response is
// tried again instead of being starved forever.
func (e *Endpoint) cost() float64 {
	now := e.b.now()
	e.ewmaMu.Lock()
	lat := e.ewma
	if !e.ewmaTime.IsZero() {
		lat *= decayWeight(now.Sub(e.ewmaTime))
	}
	e.ewmaMu.Unlock()
	// An unmeasured endpoint costs only its load, so each new endpoint is
	// tried (and measured) at once rather than losing every comparison.
	return lat * float64(e.inflight.Load()+1)
}
