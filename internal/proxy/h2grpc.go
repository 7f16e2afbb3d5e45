package proxy

// The engine's inbound gRPC: a caller's stream relayed to a stream of a
// pooled h2c connection to the app, frames both ways as they come, each
// direction written by the goroutine that read it while the receiving
// side's window is open (streamPipe).

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// grpcExchange is a gRPC call the engine relays to the app: the Value of
// both the caller's stream and the app's.
type grpcExchange struct {
	inExchange
	bodyless        bool // the caller ended its stream with the request's head
	toApp, toCaller streamPipe
}

func newGRPCExchange(in *Inbound, s *h2.Stream, end bool) *grpcExchange {
	x := &grpcExchange{inExchange: inExchange{in: in, s: s, grpc: true, reqMsgs: &grpcMessages{}, respMsgs: &grpcMessages{}},
		bodyless: end}
	x.toCaller.dst = s
	return x
}

// newAppH2Pool is the pool of h2c connections to the app, for gRPC.
func newAppH2Pool() *meshPool {
	dial := rawDial(&net.Dialer{Timeout: appDialTimeout})
	return &meshPool{handler: grpcAppSide{}, dial: func(addr string) (net.Conn, error) {
		return dial(context.Background(), "tcp", addr)
	}}
}

// forward opens the call's stream to the app (a forwarder).
func (x *grpcExchange) forward(r *http.Request, ex *exchange, src telemetry.Peer, start time.Time) {
	x.admit(r, ex, src, start)
	fields := make([]h2.Field, 0, 4+len(r.Header))
	fields = append(fields, h2.Field{Name: ":method", Value: r.Method}, h2.Field{Name: ":scheme", Value: "http"},
		h2.Field{Name: ":authority", Value: r.Host}, h2.Field{Name: ":path", Value: r.URL.RequestURI()})
	for k, vs := range r.Header {
		if hopByHopHeader(k) && k != "Te" { // gRPC asks for "te: trailers", the only TE HTTP/2 has
			continue
		}
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, h2.Field{Name: name, Value: v})
		}
	}
	up, err := x.in.appsH2.stream(ex.upstream, x, false, x.bodyless, fields...)
	if err != nil {
		x.fail(http.StatusServiceUnavailable, "UF", "the app did not answer: "+err.Error())
		return
	}
	x.toApp.dst = up
}

// fromCaller relays the request body (on the caller's reader goroutine).
func (x *grpcExchange) fromCaller(s *h2.Stream, p []byte, end bool) {
	if x.toApp.dst == nil || x.finished.Load() {
		s.Consumed(len(p)) // refused or failed: nobody takes it
		return
	}
	x.reqBytes.Add(int64(len(p)))
	x.reqMsgs.feed(p)
	x.toApp.push(s, p, end, nil)
}

// callerGone handles a reset of the caller's stream: the app's is reset
// too, and the call recorded as DC.
func (x *grpcExchange) callerGone() {
	if !x.forwarded {
		return
	}
	if up := x.toApp.dst; up != nil {
		up.Reset(http2.ErrCodeCancel)
	}
	if x.claim() {
		x.recordGone()
	}
}

// grpcAppSide receives the events of the engine's h2c streams to the app
// (the responses), on the app connection's reader goroutine.
type grpcAppSide struct{}

func (grpcAppSide) Headers(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	x := s.Value.(*grpcExchange)
	if !x.started.Load() {
		code := f.PseudoValue("status")
		if code != "" && code[0] == '1' {
			return // interim: nothing gRPC uses
		}
		x.code, _ = strconv.Atoi(code) // three digits: checked by the Conn
		x.started.Store(true)
	}
	fields := make([]h2.Field, 0, len(f.Fields))
	status := ""
	for _, hf := range f.Fields {
		if hf.Name == peerHeaderField {
			continue
		}
		if hf.Name == "grpc-status" {
			status = hf.Value
		}
		fields = append(fields, h2.Field{Name: hf.Name, Value: hf.Value})
	}
	if end {
		if x.claim() {
			x.grpcStatus = status
			x.recordClaimed(x.code)
		}
		if len(f.PseudoFields()) > 0 {
			_ = x.s.WriteHeaders(true, fields...) // trailers-only
			return
		}
		x.toCaller.push(s, nil, true, fields) // trailers, after the body still queued
		return
	}
	if err := x.s.WriteHeaders(false, fields...); err != nil {
		s.Reset(http2.ErrCodeCancel)
	}
}

func (grpcAppSide) Data(s *h2.Stream, p []byte, end bool) {
	x := s.Value.(*grpcExchange)
	x.respBytes.Add(int64(len(p)))
	x.respMsgs.feed(p)
	if end {
		x.record()
	}
	x.toCaller.push(s, p, end, nil)
}

func (grpcAppSide) Closed(s *h2.Stream, err error) {
	x := s.Value.(*grpcExchange)
	if !x.started.Load() {
		x.fail(http.StatusServiceUnavailable, "UF", "the app did not answer: "+err.Error())
		return
	}
	x.s.Reset(http2.ErrCodeInternal) // cut off midway: the caller must see it
	if x.claim() {
		x.ex.flags, x.ex.reason = "UC", "the app's response broke off: "+err.Error()
		x.recordClaimed(x.code)
	}
}

// streamPipe moves one direction of a relayed stream's body to dst: by
// the goroutine that read it, while dst's send window takes it, else by a
// goroutine of its own that waits for window, so a reader goroutine never
// waits for a peer. The source's receive window goes back as bytes are
// passed on, so flow control bounds what waits here.
type streamPipe struct {
	dst *h2.Stream

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
	if err != nil { // dst was reset: its side's Closed, or this proxy, ends the exchange
		src.Consumed(len(b))
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
			return
		}
	}
}
