package proxy

// The engine's HTTP/2 relay: a caller's stream relayed to a stream of a
// pooled HTTP/2 connection upstream, frames both ways as they come, each
// direction written by the goroutine that read it while the receiving
// side's window is open (streamPipe). Inbound it carries gRPC to the
// app's h2c; outbound, the app's h2c and gRPC to other sidecars.

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
)

// relay is a request the engine relays to an HTTP/2 upstream: the Value
// of both the caller's stream and the upstream's.
type relay struct {
	engineExchange
	bodyless       bool // the caller ended its stream with the request's head
	toUp, toCaller streamPipe
	upEnded        atomic.Bool // the upstream ended its response
	upGone         atomic.Bool // the upstream's stream is closed: it takes no more
	respEdit       fieldEdit   // a route's changes to the response head
}

// newRelay starts the relay of the request on caller stream s, recorded
// by rec as reporter.
func newRelay(s *h2.Stream, end, grpc bool, rec recorder, reporter string) *relay {
	x := &relay{engineExchange: engineExchange{s: s, rec: rec, reporter: reporter, grpc: grpc}, bodyless: end}
	if grpc {
		x.reqMsgs, x.respMsgs = &grpcMessages{}, &grpcMessages{}
	}
	x.toCaller.dst = s
	x.toCaller.broken = x.callerGone
	x.toUp.broken = func(err error) { x.upClosed(nil, err) }
	return x
}

// newAppH2Pool is the pool of h2c connections to the app, for gRPC.
func newAppH2Pool() *meshPool {
	return &meshPool{cfg: h2.Config{IdleTimeout: 5 * time.Minute}, dial: func(addr string) (net.Conn, error) {
		return connectAppRaw(context.Background(), "tcp", addr)
	}}
}

// requestFields are an admitted request's header section as the relay
// sends it upstream: hop-by-hop fields dropped but "te: trailers" (gRPC
// asks for it, the only TE HTTP/2 has).
func requestFields(r *http.Request, extra ...h2.Field) []h2.Field {
	fields := make([]h2.Field, 0, 4+len(r.Header)+len(extra))
	fields = append(fields, h2.Field{Name: ":method", Value: r.Method}, h2.Field{Name: ":scheme", Value: "http"},
		h2.Field{Name: ":authority", Value: r.Host}, h2.Field{Name: ":path", Value: r.URL.RequestURI()})
	for k, vs := range r.Header {
		if hopByHopHeader(k) && k != "Te" {
			continue
		}
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, h2.Field{Name: name, Value: v})
		}
	}
	return append(fields, extra...)
}

// open opens the upstream stream on pool's connections to addr.
func (x *relay) open(pool *meshPool, addr string, fields []h2.Field) error {
	up, err := pool.stream(addr, x, false, x.bodyless, fields...)
	if err != nil {
		return err
	}
	x.toUp.dst = up
	return nil
}

// fromCaller relays the request body and trailers (on the caller's
// reader goroutine).
func (x *relay) fromCaller(s *h2.Stream, p []byte, end bool, trailers []h2.Field) {
	if x.toUp.dst == nil || x.upGone.Load() {
		s.Consumed(len(p)) // refused, failed, or answered: nobody takes it
		return
	}
	x.reqBytes.Add(int64(len(p)))
	x.reqMsgs.feed(p)
	x.toUp.push(s, p, end, trailers)
}

// callerGone handles the caller's stream ending early (reset by the
// caller, its connection lost, or stalled writes of the response): the
// upstream's is reset too, and the request recorded as DC.
func (x *relay) callerGone(error) {
	if !x.forwarded {
		return
	}
	if up := x.toUp.dst; up != nil {
		up.Reset(http2.ErrCodeCancel)
	}
	if x.claim() {
		x.recordGone()
	}
}

// upHeaders relays the upstream's response head, interim ones, and
// trailers (on the upstream connection's reader goroutine).
func (x *relay) upHeaders(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	fields, status := relayedFields(f)
	if !x.started.Load() {
		code := f.PseudoValue("status")
		if code != "" && code[0] == '1' {
			_ = x.s.WriteHeaders(false, fields...) // interim: passed on as it came
			return
		}
		x.code, _ = strconv.Atoi(code) // three digits: checked by the Conn
		x.started.Store(true)
		fields = x.respEdit.apply(fields)
	}
	if end {
		x.upEnded.Store(true)
		if x.claim() {
			x.grpcStatus = status
			x.recordClaimedAs(x.code, endpointCode(x.grpc, x.code, status))
		}
		if len(f.PseudoFields()) > 0 {
			_ = x.s.WriteHeaders(true, fields...) // a head without a body (gRPC's trailers-only)
			return
		}
		x.toCaller.push(s, nil, true, fields) // trailers, after the body still queued
		return
	}
	if err := x.s.WriteHeaders(false, fields...); err != nil {
		s.Reset(http2.ErrCodeCancel)
	}
}

// relayedFields are f's fields as the caller gets them (without the
// sidecars' own peer field), and its grpc-status if any.
func relayedFields(f *http2.MetaHeadersFrame) (fields []h2.Field, grpcStatus string) {
	fields = make([]h2.Field, 0, len(f.Fields))
	for _, hf := range f.Fields {
		if hf.Name == peerHeaderField {
			continue
		}
		if hf.Name == "grpc-status" {
			grpcStatus = hf.Value
		}
		fields = append(fields, h2.Field{Name: hf.Name, Value: hf.Value})
	}
	return fields, grpcStatus
}

func (x *relay) upData(s *h2.Stream, p []byte, end bool) {
	x.respBytes.Add(int64(len(p)))
	x.respMsgs.feed(p)
	if end {
		x.upEnded.Store(true)
		x.record()
	}
	x.toCaller.push(s, p, end, nil)
}

// upClosed handles the upstream's stream ending early: reset by the
// upstream, the connection lost, or stalled writes of the request body.
func (x *relay) upClosed(_ *h2.Stream, err error) {
	if x.upGone.Swap(true) {
		return
	}
	switch {
	case x.upEnded.Load():
		// Answered in full, then reset: the upstream wants no more of
		// the request body, which is dropped from now on.
	case !x.started.Load():
		x.failUpstream("UF", "the upstream did not answer", err)
	default:
		x.s.Reset(http2.ErrCodeInternal) // cut off midway: the caller must see it
		if x.claim() {
			x.ex.flags, x.ex.reason = "UC", "the upstream's response broke off: "+err.Error()
			x.recordClaimed(x.code)
		}
	}
}

// streamPipe moves one direction of a relayed stream's body to dst: by
// the goroutine that read it, while dst's send window takes it, else by a
// goroutine of its own that waits for window, so a reader goroutine never
// waits for a peer. The source's receive window goes back as bytes are
// passed on, so flow control bounds what waits here.
type streamPipe struct {
	dst *h2.Stream
	// broken is told when a write to dst fails: dst was reset, by its
	// peer or for stalled writes (which its Conn does not report).
	broken func(error)

	mu       sync.Mutex
	src      *h2.Stream
	pending  []byte
	end      bool
	trailers []h2.Field
	pumping  bool
}

// push passes p on, ending dst's side after it when end, with trailers if
// any (then p is empty).
func (p *streamPipe) push(src *h2.Stream, b []byte, end bool, trailers []h2.Field) {
	p.mu.Lock()
	if p.pumping {
		p.pending = append(p.pending, b...)
		p.end, p.trailers = p.end || end, trailers
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if trailers != nil {
		_ = p.dst.WriteHeaders(true, trailers...)
		return
	}
	n, err := p.dst.TryWriteData(b, end)
	if err != nil {
		src.Consumed(len(b))
		p.broken(err)
		return
	}
	if n > 0 {
		src.Consumed(n)
	}
	if n == len(b) {
		return
	}
	p.mu.Lock()
	p.src, p.pending, p.end, p.pumping = src, append(p.pending[:0], b[n:]...), end, true
	p.mu.Unlock()
	go p.pump()
}

// pump writes what waits, as dst's window opens, until nothing does.
func (p *streamPipe) pump() {
	for {
		p.mu.Lock()
		b, end, trailers, src := p.pending, p.end, p.trailers, p.src
		p.pending, p.trailers = nil, nil
		if len(b) == 0 && !end {
			p.pumping = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		err := p.dst.WriteData(b, end && trailers == nil)
		src.Consumed(len(b))
		if err == nil && trailers != nil {
			err = p.dst.WriteHeaders(true, trailers...)
		}
		if end || err != nil {
			p.mu.Lock()
			p.pumping = false
			p.mu.Unlock()
			if err != nil {
				p.broken(err)
			}
			return
		}
	}
}
