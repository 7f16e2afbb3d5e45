package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// errOverflow is a request refused because its service's connection pool
// is full (flag UO).
var errOverflow = errors.New("the service's connection pool is full")

// circuit bounds the HTTP and gRPC requests this proxy has in flight to
// one service port, over all its endpoints: a DestinationRule's
// connectionPool (circuit breaking). Past maxActive, requests wait in
// turn, up to maxPending of them and for at most maxWait; past that they
// are refused. Requests wait on net/http's path only: the engine hands a
// service with a circuit there (route.resilient). Another circuit bounds
// the TCP connections tunnelled to the service port, which never wait
// (tryEnter). Safe for concurrent use.
type circuit struct {
	circuitLimits

	mu      sync.Mutex
	active  int
	waiters []chan struct{} // in arrival order; closed when given a slot
}

// maxWait bounds a request's wait for its turn (Envoy's default route
// timeout).
const maxWait = 15 * time.Second

// enter admits a request, waiting while the circuit is full until a
// request leaves, ctx ends or maxWait passes. It returns the function that
// lets the request out, to be called once; an error wrapping errOverflow
// when too many wait already or the wait was too long, or ctx's cause.
func (c *circuit) enter(ctx context.Context) (leave func(), err error) {
	c.mu.Lock()
	if c.active < c.maxActive {
		c.active++
		c.mu.Unlock()
		return c.leave, nil
	}
	if len(c.waiters) >= c.maxPending {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %d requests in flight and %d waiting, the most its DestinationRule %s allows",
			errOverflow, c.maxActive, c.maxPending, c.source)
	}
	turn := make(chan struct{})
	c.waiters = append(c.waiters, turn)
	c.mu.Unlock()
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	err = nil
	select {
	case <-turn:
		return c.leave, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-timer.C:
		err = fmt.Errorf("%w: waited %s for one of %d requests in flight to end (DestinationRule %s)", errOverflow, maxWait, c.maxActive, c.source)
	}
	c.mu.Lock()
	if i := slices.Index(c.waiters, turn); i >= 0 {
		c.waiters = slices.Delete(c.waiters, i, i+1)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Unlock()
	c.leave() // given a slot as the wait ended: pass it on
	return nil, err
}

// tryEnter admits a request only if there is room now, without waiting.
func (c *circuit) tryEnter() (leave func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active < c.maxActive {
		c.active++
		return c.leave, true
	}
	return nil, false
}

// circuitLimits are a circuit's bounds.
type circuitLimits struct {
	maxActive  int
	maxPending int    // 0: none wait
	source     string // the DestinationRule, "namespace/name"
}

// leave lets a request out: its slot goes to the first waiting, if any.
func (c *circuit) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) > 0 {
		close(c.waiters[0])
		c.waiters = c.waiters[1:]
		return
	}
	c.active--
}

// closeCalls is a response body that calls fn once when closed.
type closeCalls struct {
	io.ReadCloser
	once sync.Once
	fn   func()
}

func (c *closeCalls) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.fn)
	return err
}
