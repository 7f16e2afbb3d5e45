package proxy

// The outbound side of the engine for an app's HTTP/2 (h2c, gRPC): the
// app's connection is an h2 server Conn, and each request is relayed
// frame by frame to a stream of a pooled mTLS connection to the picked
// endpoint's sidecar (relay.go), so no goroutine serves a request. A
// service with an endpoint outside the mesh takes plain HTTP/1.1, which
// net/http's reverse proxy sends: its requests are bridged to
// Outbound.ServeHTTP, each on a goroutine of its own, as are those whose
// route asks for timeouts, retries or mirrors (resilience.go).
// docs/architecture.md, "The request path's engine".

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	routing "github.com/trellis-mesh/trellis/internal/route"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// h2Out handles the stream events of one app HTTP/2 connection.
type h2Out struct {
	o      *Outbound
	dst    netip.AddrPort  // the service address the app connected to
	ctx    context.Context // every request's: the destination, the local address
	remote string
}

// serveH2 serves c, the app's HTTP/2 connection to service address dst
// (its preface not read yet), until it ends; floods put the app's
// address in the penalty box.
func (o *Outbound) serveH2(c net.Conn, dst netip.AddrPort, floods *penaltyBox) {
	from := c.RemoteAddr()
	floods.serveAfterPenalty(from)
	ctx := context.WithValue(WithDestination(context.Background(), dst), http.LocalAddrContextKey, c.LocalAddr())
	h := &h2Out{o: o, dst: dst, ctx: ctx, remote: from.String()}
	conn := h2.NewServerConn(c, engineServerConfig(appBudgets, o.WriteIdleTimeout, floods, from), callerHandler{h.request})
	if !o.h2Conns.add(conn) {
		c.Close() // draining
		return
	}
	defer o.h2Conns.remove(conn)
	_ = conn.Run()
}

// request relays a stream's request to an endpoint's sidecar, or bridges
// it to ServeHTTP when its service has endpoints outside the mesh.
func (h *h2Out) request(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	r, err := newStreamRequest(h.ctx, f, end, h.remote, nil)
	if err != nil {
		s.Reset(http2.ErrCodeProtocol)
		return
	}
	o := h.o
	rt := o.routes.Load()
	route, ok := rt.byVIP[h.dst]
	if !ok || route.outside || route.circuit != nil {
		bridge(s, r, end, o) // ServeHTTP answers NR, sends plain HTTP/1.1, or waits its turn
		return
	}
	var d routing.Decision
	if route.table != nil {
		if route, d = rt.routed(route, httpView(r)); route.outside || d.Resilient() || route.circuit != nil {
			// ServeHTTP sends plain HTTP/1.1, and waits out timeouts,
			// retries and a full connection pool on a goroutine of the
			// request's own.
			r = r.WithContext(context.WithValue(r.Context(), backendKey{}, routedTo{route, d}))
			bridge(s, r, end, o)
			return
		}
	}
	ep, pickErr := route.bal.Pick()
	if pickErr == nil {
		if _, known := rt.identities[ep.Addr]; !known {
			// A pick may name an endpoint of a table still being built
			// (see h1App.forward): look again once Update is done.
			o.mu.Lock()
			rt = o.routes.Load()
			o.mu.Unlock()
		}
		if _, meshed := rt.identities[ep.Addr]; !meshed {
			bridge(s, r, end, o) // the service has an endpoint outside the mesh now
			return
		}
	}
	start := time.Now()
	x := newRelay(s, end, protocolOf(r) == "grpc", recorder{o.Metrics, o.AccessLog, o.Tracing}, "source")
	s.Value = x
	ex := &exchange{dest: telemetry.Unknown, service: route.host, svcName: route.name, svcNS: route.namespace}
	r.Header.Del(peerHeader)    // only sidecars set it
	r.Header.Del(attemptHeader) // nor this: set when a route retries
	r, ex.span = o.Tracing.Start(r, trace.SpanKindClient)
	x.admit(r, ex, rt.self, telemetry.Unknown, start)
	w := &streamWriter{s: s, onReader: true, resetAfter: !end}
	if !checkRequest(w, r, ex) {
		if x.claim() {
			x.recordClaimed(w.code)
		}
		w.finish()
		return
	}
	if d.Status != 0 {
		flag, reason := routeRefusal(d)
		if fields := routeAnswer(d, x.grpc, flag, reason); fields != nil {
			code := d.Status
			if x.grpc && d.GRPCStatus != 0 {
				code = http.StatusOK // a gRPC refusal is in its grpc-status
			}
			x.answer(code, flag, reason, fields)
		} else {
			x.fail(d.Status, flag, reason)
		}
		return
	}
	if pickErr != nil {
		x.failUpstream("UH", route.service, pickErr)
		return
	}
	peer := rt.peers[ep.Addr]
	x.dst, ex.dest, ex.upstream, x.done = peer, peer, ep.Addr, ep.Start()
	ex.mutualTLS = true
	// The peer field goes in with the rest (requestFields sizes the slice
	// for it): a route cannot change it (route refuses the mesh's headers).
	fields := applyRoute(requestFields(r, h2.Field{Name: peerHeaderField, Value: route.meta}), d)
	x.respEdit = editFields(d.ResponseHeaders)
	if err := x.open(o.pool, ep.Addr, fields); err != nil {
		x.failUpstream("UF", route.service+": endpoint "+ep.Addr, err)
	}
}
