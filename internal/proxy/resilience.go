package proxy

// Timeouts, retries and mirrors: what a route's rule asks of a request
// besides where it goes (issue #20). They run on net/http's path, where
// each request has a goroutine that can wait for a timer, a backoff or a
// second attempt; the engine hands the requests of a route that asks for
// them there (h1App.handedOff, h2Out.request). docs/traffic-management.md
// says what a user sees of them.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/balancer"
	routing "github.com/trellis-mesh/trellis/internal/route"
)

const (
	// replayLimit is the most of a request body kept to send again: a
	// request whose body is longer is neither retried nor mirrored.
	replayLimit = 64 << 10
	// defaultRetries is the retries of a policy that gives no attempts
	// (Istio's default).
	defaultRetries = 2
	// defaultBackoff is the first wait of a policy that gives no backoff
	// (Envoy's).
	defaultBackoff = 25 * time.Millisecond
	// The retry budget, Linkerd's defaults (a DestinationRule's
	// retryBudget may set the ratio and the floor): over retryWindow
	// seconds, the retries to a service may be retryRatio of its requests
	// plus retryFloor a second.
	retryRatio  = 0.2
	retryFloor  = 10
	retryWindow = 10
	// attemptHeader tells the app which attempt of a request with a retry
	// policy it serves, from 1 (as Envoy's x-envoy-attempt-count).
	attemptHeader = "X-Trellis-Attempt"
	// Copies of requests in flight to one mirror service, and to all:
	// past them copies are dropped, so a slow mirror costs the client's
	// proxy no more than this.
	mirrorsPerService = 64
	mirrorsTotal      = 256
	mirrorTimeout     = 10 * time.Second
)

var (
	errRequestTimeout = fmt.Errorf("the route's request timeout passed: %w", context.DeadlineExceeded)
	errTryTimeout     = fmt.Errorf("the route's backendRequest timeout passed: %w", context.DeadlineExceeded)
	errAttemptOver    = errors.New("the attempt this body was read for is over")
)

// withRequestTimeout bounds ctx by the decision's request timeout and, for
// a gRPC call, by its own grpc-timeout when that is shorter; the call's
// grpc-timeout then says what the bound is, so the app gives up when the
// proxy does. The cancel function must be called.
func withRequestTimeout(ctx context.Context, r *http.Request, d routing.Decision) (context.Context, context.CancelFunc) {
	limit := d.Timeouts.Request
	if limit == 0 || limit == routing.NoTimeout {
		return ctx, func() {}
	}
	if protocolOf(r) == "grpc" {
		if t, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout")); ok && t < limit {
			limit = t
		}
		r.Header.Set("Grpc-Timeout", formatGRPCTimeout(limit))
	}
	return context.WithTimeoutCause(ctx, limit, errRequestTimeout)
}

// injectDelay holds a request for a fault's delay (flag DI), before its
// timeouts start, as Envoy's fault filter runs before its router. It
// reports false when the client went away meanwhile.
func injectDelay(r *http.Request, ex *exchange, d time.Duration) bool {
	ex.flags, ex.reason = "DI", "delayed by fault injection"
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		ex.flags, ex.reason = "DC", "the client went away during an injected delay"
		return false
	}
}

// parseGRPCTimeout reads a grpc-timeout value: at most 8 digits and a
// unit (H, M, S, m, u, n).
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	unit, ok := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	if n > uint64(math.MaxInt64/unit) {
		return math.MaxInt64, true // 99999999H: longer than a Duration holds
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout value, in the finest unit
// whose count fits in 8 digits.
func formatGRPCTimeout(d time.Duration) string {
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := d / u.unit; n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.name
		}
	}
	return strconv.FormatInt(min(int64(d/time.Hour), 1e8-1), 10) + "H"
}

// resilient sends req to r as the decision's retry policy, per-try timeout
// and mirrors say: each attempt to an endpoint not tried yet when there is
// one, after a backoff, within r's retry budget.
func (o *Outbound) resilient(req *http.Request, r *route, rt *routeTable, ex *exchange, d routing.Decision) (*http.Response, error) {
	ctx := req.Context()
	body := newReplayBody(req.Body)
	o.mirror(req, rt, d.Mirrors, body)
	retries := 0
	if d.Retry != nil {
		retries = cmp.Or(d.Retry.Attempts, defaultRetries)
		r.budget.request()
	}
	var tried []*balancer.Endpoint
	for n := 1; ; n++ {
		try := req.Clone(ctx)
		if body != nil {
			try.Body = body.reader()
		}
		if d.Retry != nil {
			try.Header.Set(attemptHeader, strconv.Itoa(n))
		}
		cancel := context.CancelFunc(func() {})
		if t := d.Timeouts.BackendRequest; t != 0 && t != routing.NoTimeout {
			var tctx context.Context
			tctx, cancel = context.WithTimeoutCause(ctx, t, errTryTimeout)
			try = try.WithContext(tctx)
		}
		if dl, ok := try.Context().Deadline(); ok && protocolOf(req) == "grpc" {
			try.Header.Set("Grpc-Timeout", formatGRPCTimeout(time.Until(dl))) // what this attempt has left
		}
		resp, ep, err := o.attempt(try, r, rt, ex, tried...)
		reason := retryReason(req, resp, err, d.Retry)
		if reason == "" || n > retries || !body.replayable() || ctx.Err() != nil {
			return closingCancels(resp, err, cancel)
		}
		if !r.budget.withdraw() {
			o.Metrics.Retry(r.host, "budget_exhausted", reason)
			return closingCancels(resp, err, cancel)
		}
		// The attempt's outcome stands until the retry is sure: the
		// request may time out, or its body grow past what is kept,
		// during the backoff.
		wait := time.NewTimer(backoff(d.Retry.Backoff, n))
		select {
		case <-ctx.Done():
			wait.Stop()
			discard(resp)
			cancel()
			return nil, context.Cause(ctx)
		case <-wait.C:
		}
		if !body.replayable() {
			return closingCancels(resp, err, cancel)
		}
		o.Metrics.Retry(r.host, "retried", reason)
		discard(resp)
		cancel()
		if try.Body != nil {
			try.Body.Close()
		}
		if ep != nil {
			tried = append(tried, ep)
		}
	}
}

// discard closes an answer not wanted, unread: a body that stalls must
// not hold the retry (an HTTP/2 stream is reset).
func discard(resp *http.Response) {
	if resp != nil {
		resp.Body.Close()
	}
}

// retryReason is why an attempt's outcome for req is retried under p (""
// if it is not): a status p lists, whatever the method (the route's
// author listed it; a gRPC call answered UNAVAILABLE is a 503, see
// answerCode); the per-try timeout; a failure to connect, or a connection
// that failed under a request whose method is idempotent (RFC 9110 9.2.2:
// the endpoint may have acted on any other).
func retryReason(req *http.Request, resp *http.Response, err error, p *routing.Retry) string {
	switch {
	case p == nil:
		return ""
	case err == nil:
		if slices.Contains(p.Codes, answerCode(req, resp)) {
			return "status"
		}
	case errors.Is(err, errTryTimeout):
		return "timeout"
	case errors.Is(err, balancer.ErrNoEndpoints) || errors.Is(err, context.Canceled) || errors.Is(err, errOverflow) ||
		errors.Is(err, errAttemptOver):
	case dialFailed(err) || idempotent(req.Method):
		return "connect"
	}
	return ""
}

func dialFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// backoff is the wait before retry n (from 1): the policy's backoff at
// least, doubled each retry up to ten times it, and up to half again at
// random, so clients that failed together do not all come back together.
func backoff(base time.Duration, n int) time.Duration {
	base = cmp.Or(base, defaultBackoff)
	d := min(base<<min(n-1, 10), 10*base)
	return d + rand.N(d/2+1)
}

// closingCancels returns an attempt's outcome, cancelling its context once
// the response body is closed (or now, if there is none).
func closingCancels(resp *http.Response, err error, cancel context.CancelFunc) (*http.Response, error) {
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &closeCalls{ReadCloser: resp.Body, fn: cancel}
	return resp, nil
}

// retryBudget is one service's allowance of retries, Linkerd's budget:
// over the last retryWindow seconds, retries may be ratio of the requests
// that could be retried plus floor a second. With the defaults a service
// that fails every request sees about 1.2 times its load, not 1 +
// attempts times. Safe for concurrent use.
type retryBudget struct {
	budgetLimits // fixed once the budget is in use

	mu   sync.Mutex
	now  func() time.Time // nil: time.Now
	secs [retryWindow]budgetSecond
}

// budgetLimits are a retry budget's parameters, part of portStateKey: a
// change makes a new budget.
type budgetLimits struct {
	ratio float64 // of the requests, 0 to 1
	floor int     // retries a second always allowed
}

// defaultBudget is the budget of a service port whose traffic policy sets
// none.
var defaultBudget = budgetLimits{ratio: retryRatio, floor: retryFloor}

// budgetSecond counts one second's requests and retries.
type budgetSecond struct {
	at                int64 // the second it counts, Unix time
	requests, retries int
}

// request counts a request that may be retried.
func (b *retryBudget) request() {
	b.mu.Lock()
	b.second().requests++
	b.mu.Unlock()
}

// withdraw takes one retry from the budget, reporting whether there was
// one.
func (b *retryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.second()
	requests, retries := 0, 0
	for _, c := range b.secs {
		if c.at > s.at-retryWindow {
			requests, retries = requests+c.requests, retries+c.retries
		}
	}
	if float64(retries+1) > b.ratio*float64(requests)+float64(b.floor)*retryWindow {
		return false
	}
	s.retries++
	return true
}

// second is the count of the current second (mu held).
func (b *retryBudget) second() *budgetSecond {
	now := time.Now
	if b.now != nil {
		now = b.now
	}
	sec := now().Unix()
	s := &b.secs[sec%retryWindow]
	if s.at != sec {
		*s = budgetSecond{at: sec}
	}
	return s
}

// replayBody is a request body that can be sent again from its start as
// long as what was read of it fits in replayLimit. Each attempt reads it
// through a reader of its own: the first from the client as the bytes
// come, a later one from what was kept and then from the client again. A
// retry closes the reader of the attempt before it.
type replayBody struct {
	src    io.ReadCloser
	readMu sync.Mutex // serialises reads of src

	mu    sync.Mutex // guards the rest
	kept  []byte     // all read of src, while it fits
	read  int        // bytes read of src
	over  bool       // more than replayLimit read: kept is dropped
	err   error      // src's error once it has one: io.EOF at its end
	whole func([]byte)
	// overflow is called instead of whole when the body is too long.
	overflow func()
}

// newReplayBody returns src as a replayBody; nil for no body.
func newReplayBody(src io.ReadCloser) *replayBody {
	if src == nil || src == http.NoBody {
		return nil
	}
	return &replayBody{src: src}
}

// replayable reports whether the body can be sent again; a nil body can.
func (b *replayBody) replayable() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.over
}

// onWhole calls whole with the body once it has been read to its end
// within replayLimit, or overflow if it is longer.
func (b *replayBody) onWhole(whole func([]byte), overflow func()) {
	b.mu.Lock()
	done, over := b.err == io.EOF && !b.over, b.over
	if !done && !over {
		b.whole, b.overflow = whole, overflow
	}
	kept := b.kept
	b.mu.Unlock()
	switch {
	case done:
		whole(kept)
	case over:
		overflow()
	}
}

func (b *replayBody) reader() io.ReadCloser { return &replayReader{b: b} }

type replayReader struct {
	b      *replayBody
	pos    int
	closed atomic.Bool
}

func (c *replayReader) Close() error {
	c.closed.Store(true)
	return nil
}

func (c *replayReader) Read(p []byte) (int, error) {
	b := c.b
	for {
		if c.closed.Load() {
			return 0, errAttemptOver
		}
		b.mu.Lock()
		switch {
		case c.pos < b.read && b.over:
			b.mu.Unlock()
			return 0, errAttemptOver // a retry is not sent once the body overflows
		case c.pos < b.read:
			n := copy(p, b.kept[c.pos:])
			c.pos += n
			b.mu.Unlock()
			return n, nil
		case b.err != nil:
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		b.mu.Unlock()
		b.readMu.Lock()
		b.mu.Lock()
		if c.pos != b.read || b.err != nil { // another reader went first
			b.mu.Unlock()
			b.readMu.Unlock()
			continue
		}
		b.mu.Unlock()
		n, err := b.src.Read(p)
		c.pos += n
		then := b.readLocked(p[:n], err)
		b.readMu.Unlock()
		if then != nil {
			then()
		}
		return n, err
	}
}

// readLocked records bytes read of src and its error (readMu held), and
// returns what the end of the body calls, if anything.
func (b *replayBody) readLocked(p []byte, err error) (then func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.read += len(p)
	if !b.over && b.read > replayLimit {
		b.over, b.kept = true, nil
		if f := b.overflow; f != nil {
			then = f
		}
	} else if !b.over {
		b.kept = append(b.kept, p...)
	}
	if err != nil {
		b.err = err
		if err == io.EOF && !b.over && b.whole != nil {
			whole, kept := b.whole, b.kept
			then = func() { whole(kept) }
		}
	}
	if then != nil {
		b.whole, b.overflow = nil, nil
	}
	return then
}

// mirror sends a copy of req to each of the decision's mirrors once its
// body has been read whole, without waiting for their answers, which are
// dropped. A body longer than replayLimit is not copied.
func (o *Outbound) mirror(req *http.Request, rt *routeTable, mirrors []routing.Backend, body *replayBody) {
	if len(mirrors) == 0 {
		return
	}
	base := req.Clone(context.Background())
	base.Header.Del(attemptHeader)
	send := func(kept []byte) {
		for _, m := range mirrors {
			if to := rt.byService[backendPort(m)]; to != nil {
				o.sendMirror(base, rt, to, kept)
			}
		}
	}
	if body == nil {
		send(nil)
		return
	}
	body.onWhole(send, func() {
		for _, m := range mirrors {
			o.Metrics.Mirror(m.Name+"."+m.Namespace+".svc.cluster.local", "skipped")
		}
	})
}

// sendMirror sends one copy of base, with body, to to on a goroutine of
// its own. Its Host has "-shadow" added, as Envoy's mirrors have, so the
// mirror can tell copies from requests. A copy never waits for the
// mirror's connection pool: with it full, the copy is dropped.
func (o *Outbound) sendMirror(base *http.Request, rt *routeTable, to *route, body []byte) {
	leave, ok := func() {}, true
	if to.circuit != nil {
		leave, ok = to.circuit.tryEnter()
	}
	if !ok || !o.mirrorSlots.take(to.host) {
		if ok {
			leave()
		}
		o.Metrics.Mirror(to.host, "dropped")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), mirrorTimeout)
	m := base.Clone(ctx)
	m.Host = shadowHost(m.Host)
	m.Body, m.ContentLength = nil, 0
	if len(body) > 0 {
		m.Body, m.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	go func() {
		defer cancel()
		defer o.mirrorSlots.give(to.host)
		defer leave()
		defer countPanics()
		outcome := "failed"
		if resp, _, err := o.send(m, to, rt, &exchange{}, nil); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			outcome = "answered"
		}
		o.Metrics.Mirror(to.host, outcome)
	}()
}

// shadowHost is host with "-shadow" after its name, before any port.
func shadowHost(host string) string {
	if h, port, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h+"-shadow", port)
	}
	return host + "-shadow"
}

// mirrorSlots bounds the copies of requests in flight, per mirror service
// and in all.
type mirrorSlots struct {
	total      atomic.Int64
	perService sync.Map // host -> *atomic.Int64
}

func (s *mirrorSlots) take(host string) bool {
	v, _ := s.perService.LoadOrStore(host, new(atomic.Int64))
	per := v.(*atomic.Int64)
	if per.Add(1) > mirrorsPerService {
		per.Add(-1)
		return false
	}
	if s.total.Add(1) > mirrorsTotal {
		s.total.Add(-1)
		per.Add(-1)
		return false
	}
	return true
}

func (s *mirrorSlots) give(host string) {
	if v, ok := s.perService.Load(host); ok {
		v.(*atomic.Int64).Add(-1)
	}
	s.total.Add(-1)
}
