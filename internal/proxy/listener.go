package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// alpnTCP is the ALPN protocol of opaque TCP tunnelled between sidecars.
const alpnTCP = "trellis-tcp/1"

// OutboundServer accepts the app's outbound connections (captured, or on an
// explicit listener), detects their protocol and hands HTTP to Outbound's
// per-request balancing and opaque TCP to a per-connection tunnel.
// Destinations outside the mesh pass through unchanged.
type OutboundServer struct {
	out     *Outbound
	store   *meshtls.Store
	dial    *net.Dialer
	http    *http.Server
	conns   *connListener
	tunnels tunnels
	limit   connLimit
	floods  penaltyBox // clients cut off for HTTP/2 floods
	// engineIdle is the engine's keep-alive idle timeout for connections
	// accepted from now, as http.IdleTimeout is net/http's (which may not
	// change once it serves).
	engineIdle atomic.Int64
	// SniffWait bounds how long an undeclared port waits for the client's
	// first bytes before treating it as server-first TCP.
	SniffWait time.Duration
}

// DefaultMaxConnections bounds the connections each side of the proxy
// (outbound, inbound) holds open at once.
const DefaultMaxConnections = 4096

// SetMaxConnections sets how many connections may be open at once (0: no
// limit).
func (s *OutboundServer) SetMaxConnections(n int) { s.limit.max.Store(int64(n)) }

type connDst struct {
	net.Conn
	dst netip.AddrPort
}

// NewOutboundServer serves out's routes; dial carries the proxy's mark.
func NewOutboundServer(out *Outbound, store *meshtls.Store, dial *net.Dialer) *OutboundServer {
	s := &OutboundServer{out: out, store: store, dial: dial, conns: newConnListener(), SniffWait: 100 * time.Millisecond}
	s.limit.max.Store(DefaultMaxConnections)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true) // Upgrades and what the engine hands over; HTTP/2 is the engine's
	s.http = &http.Server{
		Handler:           out,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		// Protocols leave HTTP/2 off (the engine serves it); its limits
		// stay set, so turning it on can never serve it unbounded.
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          100,
			MaxReadFrameSize:              16 << 10,
			MaxReceiveBufferPerConnection: 1 << 20,
			MaxReceiveBufferPerStream:     1 << 20,
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			cd := c.(*connDst)
			return withGuard(WithDestination(ctx, cd.dst), cd.Conn)
		},
	}
	s.engineIdle.Store(int64(s.http.IdleTimeout))
	go func() { _ = s.http.Serve(s.conns) }()
	return s
}

// Close stops the HTTP side at once; tunnels end with their connections.
func (s *OutboundServer) Close() error {
	s.out.h2Conns.close()
	return s.http.Close()
}

// Shutdown stops taking connections and lets the requests and tunnels in
// flight finish until ctx ends; then it closes what is left.
func (s *OutboundServer) Shutdown(ctx context.Context) error {
	h1, h2c := make(chan error, 1), make(chan error, 1)
	go func() { h1 <- s.out.engineConns.shutdown(ctx) }()
	go func() { h2c <- s.out.h2Conns.shutdown(ctx, (*h2.Conn).GoAway) }()
	return errors.Join(drain(ctx, &s.tunnels, s.http), <-h1, <-h2c)
}

// ServeExplicit accepts on ln and sends everything to the service port up
// names: the explicit mode, where the app calls a localhost port instead of
// the service, for hosts where traffic cannot be redirected. The service's
// address is looked up in the config in force for each connection. It
// returns when ln is closed.
func (s *OutboundServer) ServeExplicit(ln net.Listener, up Upstream) {
	acceptLoop(ln, func(c net.Conn) {
		dst, ok := s.out.serviceAddr(up.Name, up.Namespace, up.Port)
		if !ok {
			slog.Warn("explicit upstream: no such service port in the config", "upstream", up)
			c.Close()
			return
		}
		serveConn(c, func() { s.HandleConn(c, dst) })
	})
}

// Upstream is a service port the app reaches on a local listener.
type Upstream struct {
	Name, Namespace string
	Port            uint16
	Listen          netip.AddrPort // on loopback
}

func (u Upstream) String() string {
	return fmt.Sprintf("%s.%s:%d=%s", u.Name, u.Namespace, u.Port, u.Listen)
}

// ParseUpstream reads NAME.NAMESPACE:PORT=127.0.0.1:LOCALPORT.
func ParseUpstream(s string) (Upstream, error) {
	svc, listen, ok := strings.Cut(s, "=")
	host, port, err := net.SplitHostPort(svc)
	name, ns, dotted := strings.Cut(host, ".")
	p, perr := strconv.ParseUint(port, 10, 16)
	if !ok || err != nil || !dotted || name == "" || ns == "" || strings.Contains(ns, ".") || perr != nil || p == 0 {
		return Upstream{}, fmt.Errorf("upstream %q: want NAME.NAMESPACE:PORT=127.0.0.1:LOCALPORT, for example hello.web:8080=127.0.0.1:18080", s)
	}
	addr, err := netip.ParseAddrPort(listen)
	if err != nil || !addr.Addr().IsLoopback() {
		return Upstream{}, fmt.Errorf("upstream %q: the local address %q must be a loopback address and port (127.0.0.1:PORT or [::1]:PORT), so only the pod's own app can use it", s, listen)
	}
	return Upstream{Name: name, Namespace: ns, Port: uint16(p), Listen: addr}, nil
}

// HandleConn routes one outbound connection headed for dst.
func (s *OutboundServer) HandleConn(c net.Conn, dst netip.AddrPort) {
	if c = s.limit.admit(c); c == nil {
		refusals.Log(slog.LevelWarn, "outbound connection refused: connection limit reached", "limit", s.limit.max.Load())
		return
	}
	// One look at the routes: a config pushed while this connection is
	// set up must not change (or remove) the route it was taken for.
	rt := s.out.routes.Load()
	r, ok := rt.byVIP[dst]
	if !ok {
		s.passthrough(c, dst) // may splice: net's own I/O
		return
	}
	c = withRawIO(c)
	if r.protocol == meshpb.Protocol_PROTOCOL_TCP {
		s.tunnel(c, rt, r)
		return
	}
	br := bufio.NewReader(c)
	p, err := Sniff(c, br, s.SniffWait)
	if err != nil {
		c.Close()
		return
	}
	conn := &peekedConn{Conn: c, r: br}
	declared := r.protocol == meshpb.Protocol_PROTOCOL_HTTP || r.protocol == meshpb.Protocol_PROTOCOL_HTTP2 || r.protocol == meshpb.Protocol_PROTOCOL_GRPC
	if p == HTTP1 {
		buffered, _ := br.Peek(br.Buffered())
		s.out.serveH1(c, dst, buffered, h1Options{
			headerTimeout: s.http.ReadHeaderTimeout, idleTimeout: time.Duration(s.engineIdle.Load()),
			handoff: func(c net.Conn) { s.conns.push(&connDst{Conn: guardHTTP1(c), dst: dst}) },
		})
		return
	}
	if p == HTTP2 {
		s.out.serveH2(conn, dst, &s.floods)
		return
	}
	if declared { // net/http answers what is not HTTP/1.1 with 400
		s.conns.push(&connDst{Conn: guardHTTP1(conn), dst: dst})
		return
	}
	s.tunnel(conn, rt, r)
}

// passthrough connects the app to a destination outside the mesh as if the
// proxy were not there.
func (s *OutboundServer) passthrough(c net.Conn, dst netip.AddrPort) {
	defer c.Close()
	if !s.tunnels.add(c) {
		return // shutting down
	}
	defer s.tunnels.remove(c)
	up, err := s.dial.Dial("tcp", dst.String())
	if err != nil {
		return
	}
	defer up.Close()
	pipe(c, up)
}

// tunnel balances one opaque TCP connection to an endpoint, over mTLS to
// its sidecar when it has one. Past the service port's limit on TCP
// connections (r.conns) it closes the connection at once, flag UO.
func (s *OutboundServer) tunnel(c net.Conn, rt *routeTable, r *route) {
	defer c.Close()
	if !s.tunnels.add(c) {
		return // shutting down
	}
	defer s.tunnels.remove(c)
	if r.conns != nil {
		leave, ok := r.conns.tryEnter()
		if !ok {
			refusals.Log(slog.LevelWarn, "TCP connection refused: the service's connection pool is full (flag UO); raise its DestinationRule's connectionPool.tcp.maxConnections if the limit is too low",
				"service", r.service, "maxConnections", r.conns.maxActive, "destinationRule", r.conns.source)
			s.opened(rt, r, "", "UO")(0, 0)
			return
		}
		defer leave()
	}
	ep, err := r.bal.Pick()
	if err != nil {
		slog.Warn("TCP: no healthy upstream", "service", r.service)
		return
	}
	done := ep.Start()
	start := time.Now()
	var up net.Conn
	if want, meshed := rt.identities[ep.Addr]; meshed {
		cfg := meshtls.ClientConfig(s.store, meshtls.Exactly(want))
		cfg.NextProtos = []string{alpnTCP}
		up, err = (&tlsDialer{net: s.dial, cfg: cfg}).dial(ep.Addr)
		if err == nil {
			err = writePreamble(up, r.meta)
		}
	} else {
		up, err = s.dial.Dial("tcp", ep.Addr)
	}
	done(resultOf(start, err))
	if err != nil {
		slog.Warn("TCP: upstream connect failed", "service", r.service, "endpoint", ep.Addr, "err", err)
		return
	}
	defer up.Close()
	closed := s.opened(rt, r, ep.Addr, "")
	request, response := pipe(c, up)
	closed(response, request)
}

// opened records a tunnelled connection to r's service, to endpoint addr
// ("": none, the connection was refused with flags), and returns the
// function that records its end.
func (s *OutboundServer) opened(rt *routeTable, r *route, addr, flags string) (closed func(sent, received int64)) {
	m := s.out.Metrics
	if m == nil {
		return func(int64, int64) {}
	}
	dest := telemetry.Unknown
	if addr != "" {
		dest = rt.peers[addr]
	}
	_, meshed := rt.identities[addr]
	return m.Opened(telemetry.Connection{Reporter: "source", Source: rt.self, Dest: dest,
		Service: r.host, ServiceName: r.name, ServiceNamespace: r.namespace, MutualTLS: meshed, Flags: flags})
}
