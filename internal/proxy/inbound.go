package proxy

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/nft"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/rawio"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Inbound terminates connections to the workload: mutual TLS from other
// sidecars (HTTP/2, whatever the caller's app spoke; HTTP/1.1 for
// WebSocket and other Upgrades) and, in PERMISSIVE
// mode, plaintext from outside the mesh. It hands each request to the app
// on localhost in the app's own protocol: gRPC over HTTP/2 cleartext,
// everything else over HTTP/1.1.
type Inbound struct {
	// Metrics records every request (reporter "destination"); nil records
	// nothing.
	Metrics *telemetry.Metrics
	// AccessLog gets an entry per request; nil logs nothing.
	AccessLog *slog.Logger
	// Tracing makes every request a server span and hands the app its
	// trace context; nil does neither.
	Tracing *telemetry.Tracing
	// WriteIdleTimeout cuts off a response whose writes make no progress
	// for that long (a client that stopped reading); 0 never does.
	WriteIdleTimeout time.Duration
	// AppAddr is the address the app is reached at: the pod's own
	// (Istio's way since 1.10), so an app's loopback-only listeners stay
	// out of the mesh's reach; empty: 127.0.0.1.
	AppAddr string
	// PlaintextIdleTimeout closes a tunnel from outside the mesh
	// (PERMISSIVE) after no byte moved either way for that long, so idle
	// strangers do not keep connection slots. Default 1 h (Istio's TCP
	// idle timeout).
	PlaintextIdleTimeout time.Duration

	store       *meshtls.Store
	trustDomain string
	policy      atomic.Pointer[meshpb.InboundPolicy]
	authz       atomic.Pointer[authz.Engine]        // nil: no AuthorizationPolicy applies
	authn       atomic.Pointer[authn.Authenticator] // nil: no RequestAuthentication applies
	self        atomic.Pointer[telemetry.Peer]
	services    atomic.Pointer[map[string]bool] // "name.namespace" of the services this workload's identity serves
	httpPorts   atomic.Pointer[map[uint16]bool] // app ports a service declares HTTP, HTTP/2 or gRPC

	// h1 serves HTTP/1.1 connections (plaintext, mTLS for Upgrades)
	// through the framing guard, and forwards their requests with proxy
	// over toApp; the engine serves HTTP/2.
	h1    *http.Server
	toApp *http.Transport
	proxy *httputil.ReverseProxy

	h1Conns     *connListener
	engineConns connSet[*h2.Conn] // the engine's HTTP/2 connections: a drain sends GOAWAY
	apps        appPool           // the engine's HTTP/1.1 connections to the app
	appsH2      *meshPool         // the engine's h2c connections to the app, for gRPC
	tunnels     tunnels
	limit       connLimit
	floods      penaltyBox // clients cut off for HTTP/2 floods
	observed    observedAccess
	// unconfigured: connections are refused until the first config
	// (HoldUntilConfigured), so a restarted sidecar never serves without
	// its mTLS mode and policies.
	unconfigured atomic.Bool
}

// NewInbound accepts peers of trustDomain presenting certificates that
// verify against store's bundle.
func NewInbound(store *meshtls.Store, trustDomain string) *Inbound {
	in := &Inbound{store: store, trustDomain: trustDomain, h1Conns: newConnListener()}
	in.appsH2 = newAppH2Pool()
	in.limit.max.Store(DefaultMaxConnections)
	in.limit.perSource = true
	in.policy.Store(&meshpb.InboundPolicy{})
	in.self.Store(&telemetry.Unknown)
	in.toApp = &http.Transport{
		DialContext:           connectAppRaw,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       time.Minute,
		ResponseHeaderTimeout: 15 * time.Second,
	}
	in.proxy = &httputil.ReverseProxy{
		Rewrite:        func(*httputil.ProxyRequest) {},
		Transport:      roundTripperFunc(in.roundTrip),
		BufferPool:     copyBuffers,
		ModifyResponse: stepAsideOnSwitch,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !clientGone(r, err) {
				// The caller may be anyone: it learns that the app did
				// not answer, the access log learns why.
				ex := exchangeOf(r)
				failWith(w, ex, http.StatusServiceUnavailable, "UF", "the app did not answer")
				ex.reason = "the app did not answer: " + err.Error()
			}
		},
	}
	in.h1 = in.server()
	go func() { _ = in.h1.Serve(in.h1Conns) }()
	return in
}

// server builds the inbound HTTP/1.1 server. Every connection handed to
// it (portConn: plaintext, mTLS for Upgrades, HTTP found inside a TCP
// tunnel) comes with its TLS, if any, already done and through the
// framing guard; its requests carry the connection's app port.
func (in *Inbound) server() *http.Server {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	return &http.Server{
		Handler:           in,
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
			pc := c.(*portConn)
			if pc.state != nil {
				ctx = withConnTLS(ctx, pc.state)
			}
			return context.WithValue(withGuard(ctx, pc.Conn), appPortKey{}, pc.port)
		},
	}
}

// Close stops serving connections handed to the inbound side at once.
func (in *Inbound) Close() error {
	in.engineConns.close()
	in.apps.closeIdle()
	in.appsH2.close()
	return in.h1.Close()
}

// Shutdown stops taking connections and lets the requests and tunnels in
// flight finish until ctx ends; then it closes what is left.
func (in *Inbound) Shutdown(ctx context.Context) error {
	engine := make(chan error, 1)
	go func() { engine <- in.engineConns.shutdown(ctx, (*h2.Conn).GoAway) }()
	err := errors.Join(drain(ctx, &in.tunnels, in.h1), <-engine)
	in.apps.closeIdle()
	in.appsH2.close()
	return err
}

// SetWorkload names the workload this proxy serves, for metrics.
func (in *Inbound) SetWorkload(w *meshpb.Workload) {
	p := selfPeer(w)
	in.self.Store(&p)
}

// SetConfig learns from a config its AuthorizationPolicies and which
// services this workload serves: those with an endpoint of its identity.
// Only they may name the
// destination service in its metrics; a caller's Host header or claim
// naming anything else is recorded as "unknown", so callers cannot grow
// the metrics without bound.
func (in *Inbound) SetConfig(c *meshpb.ProxyConfig) {
	in.SetWorkload(c.GetWorkload())
	own, httpPorts := map[string]bool{}, map[uint16]bool{}
	for _, svc := range c.GetServices() {
		for _, port := range svc.GetPorts() {
			for _, ep := range port.GetEndpoints() {
				if ep.GetIdentity() != c.GetWorkload().GetIdentity() {
					continue
				}
				own[svc.GetName()+"."+svc.GetNamespace()] = true
				switch port.GetProtocol() {
				case meshpb.Protocol_PROTOCOL_HTTP, meshpb.Protocol_PROTOCOL_HTTP2, meshpb.Protocol_PROTOCOL_GRPC:
					httpPorts[uint16(ep.GetPort())] = true
				}
			}
		}
	}
	in.services.Store(&own)
	in.httpPorts.Store(&httpPorts)
	in.setAuthorization(c.GetAuthorization())
	in.setAuthentication(c.GetAuthentication())
	in.unconfigured.Store(false)
}

// destService names the service a request or connection was for, as
// metrics record it: name and namespace, if this workload serves that
// service, else "unknown".
func (in *Inbound) destService(name, namespace string) (host, n, ns string) {
	if own := in.services.Load(); own == nil || !(*own)[name+"."+namespace] {
		return "unknown", "unknown", "unknown"
	}
	return name + "." + namespace + ".svc.cluster.local", name, namespace // as the outbound names it
}

// SetMaxConnections sets how many connections may be open at once (0: no
// limit).
func (in *Inbound) SetMaxConnections(n int) { in.limit.max.Store(int64(n)) }

// SetPolicy installs the PeerAuthentication in force.
func (in *Inbound) SetPolicy(p *meshpb.InboundPolicy) {
	if p == nil {
		p = &meshpb.InboundPolicy{}
	}
	in.policy.Store(p)
}

type appPortKey struct{}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// HoldUntilConfigured makes the inbound side refuse connections until
// SetConfig: a sidecar whose config comes later (from the control plane)
// has no PeerAuthentication or AuthorizationPolicy to enforce before it.
func (in *Inbound) HoldUntilConfigured() { in.unconfigured.Store(true) }

// HandleConn serves one accepted connection meant for the app's appPort.
// It returns when the connection is done.
func (in *Inbound) HandleConn(c net.Conn, appPort uint16) {
	from := c.RemoteAddr()
	if in.unconfigured.Load() {
		refusals.Log(slog.LevelWarn, "inbound connection refused: no config yet (its mTLS mode and policies are not known)", "from", from)
		c.Close()
		return
	}
	if c = in.limit.admit(c); c == nil {
		refusals.Log(slog.LevelWarn, "inbound connection refused: connection limit reached (in all, or this address's quarter)",
			"limit", in.limit.max.Load(), "from", from)
		return
	}
	// Raw I/O under TLS and net/http too: fewer thread hand-offs per
	// request (bench/RESULTS.md).
	c = withRawIO(c)
	br := bufio.NewReader(c)
	p, err := Sniff(c, br, 100*time.Millisecond)
	if err != nil {
		c.Close()
		return
	}
	conn := &peekedConn{Conn: c, r: br}
	if p == TLS {
		in.serveMTLS(conn, appPort)
		return
	}
	if in.strict(appPort) {
		refusals.Log(slog.LevelInfo, "refused plaintext connection: STRICT mutual TLS", "from", c.RemoteAddr(), "port", appPort)
		if in.Metrics != nil { // as Envoy counts it: a TCP connection no filter chain took (NR)
			in.Metrics.Opened(telemetry.Connection{Reporter: "destination", Source: telemetry.Unknown, Dest: *in.self.Load(),
				Service: "unknown", ServiceName: "unknown", ServiceNamespace: "unknown", Flags: "NR"})(0, 0)
		}
		c.Close()
		return
	}
	in.serveDetected(conn, p, appPort, nil, "")
}

// serveDetected serves a connection whose first bytes were sniffed as p:
// every HTTP request (HTTP/1 with any method, h2c) takes the HTTP path,
// where the identity headers are stripped and set by the sidecar; only
// what is not HTTP is tunnelled to the app as it is. state is the mTLS
// peer's handshake (nil for plaintext) and meta its tunnel preamble.
func (in *Inbound) serveDetected(c net.Conn, p Protocol, appPort uint16, state *tls.ConnectionState, meta string) {
	switch p {
	case HTTP1:
		in.h1Conns.push(&portConn{Conn: guardHTTP1(c), port: appPort, state: state})
	case HTTP2:
		in.serveH2(c, state, appPort)
	default:
		if ports := in.httpPorts.Load(); ports != nil && (*ports)[appPort] {
			// The port is declared HTTP: bytes that are not HTTP are
			// not passed to the app raw, past the identity headers.
			refusals.Log(slog.LevelInfo, "refused a connection that is not HTTP on an HTTP port", "from", c.RemoteAddr(), "port", appPort)
			c.Close()
			return
		}
		in.tunnel(c, appPort, meta)
	}
}

func (in *Inbound) strict(port uint16) bool {
	pol := in.policy.Load()
	mode, ok := pol.GetPortModes()[uint32(port)]
	if !ok {
		mode = pol.GetMode()
	}
	return mode == meshpb.MTLSMode_MTLS_MODE_STRICT
}

func (in *Inbound) serveMTLS(c net.Conn, appPort uint16) {
	cfg := meshtls.ServerConfig(in.store, meshtls.MemberOf(in.trustDomain))
	cfg.NextProtos = []string{"h2", "http/1.1", alpnTCP} // http/1.1: Upgrade requests
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		refusals.Log(slog.LevelInfo, "refused mTLS peer", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == alpnTCP {
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		meta, err := readPreamble(tc)
		tc.SetReadDeadline(time.Time{})
		if err != nil {
			refusals.Log(slog.LevelInfo, "refused TCP tunnel: bad preamble", "from", c.RemoteAddr(), "err", err)
			tc.Close()
			return
		}
		// The caller's ALPN says TCP, but what it tunnels may be HTTP:
		// a peer's choice cannot take a request past the HTTP path.
		br := bufio.NewReader(tc)
		p, err := Sniff(tc, br, 100*time.Millisecond)
		if err != nil {
			tc.Close()
			return
		}
		cs := tc.ConnectionState()
		in.serveDetected(&peekedTLS{peekedConn: peekedConn{Conn: tc, r: br}, tc: tc}, p, appPort, &cs, meta)
		return
	}
	if cs := tc.ConnectionState(); cs.NegotiatedProtocol == "h2" {
		in.serveH2(tc, &cs, appPort)
		return
	}
	cs := tc.ConnectionState() // HTTP/1.1, for Upgrades
	in.h1Conns.push(&portConn{Conn: guardHTTP1(tc), port: appPort, state: &cs})
}

type tlsStateKey struct{}

// connTLS is one TLS connection's state, shared by its requests: the
// handshake, and the peer's metadata as last decoded. A sidecar sends the
// same metadata with every request of its workload; decoding it, and
// hashing the certificate for XFCC, each time was a tenth of the inbound
// side's CPU per request.
type connTLS struct {
	state *tls.ConnectionState
	peer  atomic.Pointer[decodedPeer]
	xfcc  atomic.Pointer[[2]string] // the self principal it was made for, and the value
}

// decodedPeer is a peer's metadata header and what it decoded to; v is
// only read.
type decodedPeer struct {
	header string
	src    telemetry.Peer
	v      url.Values
}

// withConnTLS gives ctx, a connection's, its TLS state.
func withConnTLS(ctx context.Context, state *tls.ConnectionState) context.Context {
	return context.WithValue(ctx, tlsStateKey{}, &connTLS{state: state})
}

// connTLSOf is the request's TLS connection: the one its connection's
// context carries, or one for net/http's handshake; nil for plaintext.
func connTLSOf(r *http.Request) *connTLS {
	if c, _ := r.Context().Value(tlsStateKey{}).(*connTLS); c != nil {
		return c
	}
	if r.TLS != nil {
		return &connTLS{state: r.TLS}
	}
	return nil
}

// tlsState is the request's mutual TLS state; nil for plaintext.
func tlsState(r *http.Request) *tls.ConnectionState {
	if c, _ := r.Context().Value(tlsStateKey{}).(*connTLS); c != nil {
		return c.state
	}
	return r.TLS
}

// source is the peer that sent metadata header, as decodePeer reads it;
// false if the certificate holds no mesh identity. Only metadata the
// certificate agrees with is kept for the next request: anything else
// is decoded (and counted) again.
func (c *connTLS) source(header string) (telemetry.Peer, url.Values, bool) {
	if d := c.peer.Load(); d != nil && d.header == header {
		return d.src, d.v, true
	}
	id, err := meshtls.PeerID(*c.state)
	if err != nil {
		return telemetry.Unknown, nil, false
	}
	src, v := decodePeer(header, id)
	if len(v) > 0 {
		c.peer.Store(&decodedPeer{header: header, src: src, v: v})
	}
	return src, v, true
}

// xfccFor is the XFCC value for the peer, with self as By.
func (c *connTLS) xfccFor(self string) string {
	if x := c.xfcc.Load(); x != nil && x[0] == self {
		return x[1]
	}
	x := &[2]string{self, xfcc(self, c.state)}
	c.xfcc.Store(x)
	return x[1]
}

// ServeHTTP forwards one inbound request to the app and records it. The
// caller's metadata header is believed only over mutual TLS, and never
// passed on to the app.
func (in *Inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) { in.serve(w, r, nil) }

// forwarder sends an admitted request to the app in place of the reverse
// proxy, and records it when it ends.
type forwarder func(r *http.Request, ex *exchange, src telemetry.Peer, start time.Time)

// serve checks, authenticates and authorizes a request, answering it if
// it is refused, and forwards it to the app: with forward if set, else
// with the reverse proxy.
func (in *Inbound) serve(w http.ResponseWriter, r *http.Request, forward forwarder) {
	defer countPanics()
	start := time.Now()
	ex := &exchange{}
	src := telemetry.Unknown
	ct := connTLSOf(r)
	if ct != nil {
		var v url.Values
		if src, v, ex.mutualTLS = ct.source(r.Header.Get(peerHeader)); ex.mutualTLS {
			ex.service, ex.svcName, ex.svcNS = in.destService(v.Get("service_name"), v.Get("service_namespace"))
		}
	}
	r.Header.Del(peerHeader)
	r.Header.Del(xfccHeader)
	if ex.mutualTLS {
		r.Header.Set(xfccHeader, ct.xfccFor(in.self.Load().Principal))
	}
	if ex.service == "unknown" || ex.service == "" {
		host, _, _ := strings.Cut(r.Host, ":")
		ex.service, ex.svcName, ex.svcNS = in.destService(serviceOfHost(host))
	}
	ow, body := observe(w, r, in.WriteIdleTimeout)
	port, ok := r.Context().Value(appPortKey{}).(uint16)
	if ok {
		ex.upstream = net.JoinHostPort(in.appHost(), strconv.Itoa(int(port)))
	}
	if ex.mutualTLS {
		r, ex.span = in.Tracing.Start(r, trace.SpanKindServer)
	} else {
		r, ex.span = in.Tracing.StartUntrusted(r)
	}
	defer recordAfter(recorder{in.Metrics, in.AccessLog, in.Tracing}, "destination", src, in.self.Load(), ex, r, ow, body, start)
	if !checkRequest(ow, r, ex) || cancelledEarly(r, ex) {
		return
	}
	auth, ok := in.authenticate(ow, r, ex)
	if !ok || !in.authorizeHTTP(ow, r, ex, port, auth) {
		return
	}
	in.observe(src, ex.mutualTLS, port, r.Method, r.URL.EscapedPath())
	if forward != nil {
		ex.recordedLater = true
		forward(r, ex, src, start)
		return
	}
	in.proxy.ServeHTTP(ow, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex)))
}

// serviceOfHost reads a Kubernetes service name and namespace from a
// caller's host name (<name>.<namespace>.svc[.<domain>]), for callers
// outside the mesh, which send no metadata; "unknown" for any other name.
func serviceOfHost(host string) (name, namespace string) {
	parts := strings.SplitN(host, ".", 4)
	if len(parts) < 3 || parts[2] != "svc" || parts[0] == "" || parts[1] == "" {
		return "unknown", "unknown"
	}
	return parts[0], parts[1]
}

// xfccHeader tells the app who called, as Envoy's
// x-forwarded-client-cert does with Istio's default (SANITIZE_SET): set by
// the sidecar from the verified mTLS peer, removed from anything else.
const (
	xfccHeader = "X-Forwarded-Client-Cert"
	xfccField  = "x-forwarded-client-cert" // as HTTP/2 spells it
)

// xfcc is the header's value: this proxy's identity (By), the hash of
// the caller's certificate and its SPIFFE ID (URI).
func xfcc(self string, cs *tls.ConnectionState) string {
	leaf := cs.PeerCertificates[0]
	sum := sha256.Sum256(leaf.Raw)
	uri := ""
	if len(leaf.URIs) > 0 {
		uri = leaf.URIs[0].String()
	}
	return "By=" + self + ";Hash=" + hex.EncodeToString(sum[:]) + ";URI=" + uri
}

func (in *Inbound) roundTrip(req *http.Request) (*http.Response, error) {
	port, _ := req.Context().Value(appPortKey{}).(uint16)
	req.URL.Scheme = "http"
	req.URL.Host = net.JoinHostPort(in.appHost(), strconv.Itoa(int(port)))
	return in.toApp.RoundTrip(req)
}

// connectApp connects to the app at addr (the pod's address or loopback),
// from nft.InboundSource when addr is IPv4: the pod's capture rules send
// the proxy's other connections to its own pod to the inbound port, and
// pass these. The source port is picked at connect, per destination
// (IP_BIND_ADDRESS_NO_PORT): bound before, each would hold its port
// against every destination, and the closed connections' TIME_WAITs would
// run the pod out of ports for all its connections, outbound too.
func connectApp(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: appDialTimeout}
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Unmap().Is4() {
		addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		d.LocalAddr = &net.TCPAddr{IP: nft.InboundSource.AsSlice()}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// connectAppRaw is connectApp with raw I/O on the connection.
func connectAppRaw(ctx context.Context, _, addr string) (net.Conn, error) {
	c, err := connectApp(ctx, addr)
	if err != nil {
		return nil, err
	}
	return rawio.Wrap(c), nil
}

func (in *Inbound) appHost() string { return cmp.Or(in.AppAddr, "127.0.0.1") }

// tunnel copies an opaque connection to the app; meta is the caller's
// metadata from the tunnel preamble (mTLS only).
func (in *Inbound) tunnel(c net.Conn, appPort uint16, meta string) {
	defer c.Close()
	if !in.tunnels.add(c) {
		return // shutting down
	}
	defer in.tunnels.remove(c)
	conn, cs := in.tcpConnection(c, meta)
	if in.authz.Load() != nil {
		if d := in.authorize(peerRequest(cs, c.RemoteAddr(), c.LocalAddr(), appPort)); !d.Allowed {
			refusals.Log(slog.LevelInfo, "refused TCP connection: "+deniedBy(d), "from", c.RemoteAddr(), "port", appPort)
			conn.Flags = "RBAC"
			in.opened(conn)(0, 0)
			return
		}
	}
	in.observe(conn.Source, conn.MutualTLS, appPort, "", "")
	app, err := connectApp(context.Background(), net.JoinHostPort(in.appHost(), strconv.Itoa(int(appPort))))
	if err != nil {
		slog.Warn("inbound TCP: app unreachable", "port", appPort, "err", err)
		return
	}
	defer app.Close()
	closed := in.opened(conn)
	if meta == "" { // from outside the mesh
		w := closeWhenIdle(cmp.Or(in.PlaintextIdleTimeout, time.Hour), c, app)
		defer w.stop()
		c, app = w.track(c), w.track(app)
	}
	request, response := pipe(c, app)
	closed(response, request)
}

// tcpConnection is a tunnelled connection as the destination reporter
// records it, and its mTLS state (nil for plaintext).
func (in *Inbound) tcpConnection(c net.Conn, meta string) (telemetry.Connection, *tls.ConnectionState) {
	conn := telemetry.Connection{Reporter: "destination", Source: telemetry.Unknown, Dest: *in.self.Load(),
		Service: "unknown", ServiceName: "unknown", ServiceNamespace: "unknown"}
	if p, ok := c.(*peekedTLS); ok {
		c = p.tc
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return conn, nil
	}
	cs := tc.ConnectionState()
	if id, err := meshtls.PeerID(cs); err == nil {
		var v url.Values
		conn.Source, v = decodePeer(meta, id)
		conn.MutualTLS = true
		conn.Service, conn.ServiceName, conn.ServiceNamespace = in.destService(v.Get("service_name"), v.Get("service_namespace"))
	}
	return conn, &cs
}

// opened records a tunnelled connection's start; the function it returns,
// its end.
func (in *Inbound) opened(conn telemetry.Connection) func(sent, received int64) {
	if in.Metrics == nil {
		return func(int64, int64) {}
	}
	return in.Metrics.Opened(conn)
}

// pipe copies both ways until both directions are done, half-closing each
// side when its source ends. It returns the bytes copied from a to b and
// from b to a.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		*n, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	wg.Add(2)
	go cp(b, a, &aToB)
	go cp(a, b, &bToA)
	wg.Wait()
	return aToB, bToA
}

// peekedConn is a connection whose first bytes were read into r by Sniff.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// portConn remembers which app port an HTTP/1 connection was meant for,
// and over mTLS (a tunnel that carried HTTP) the peer's handshake.
type portConn struct {
	net.Conn
	port  uint16
	state *tls.ConnectionState
}

// peekedTLS is a sniffed mTLS connection: reads go through the sniffer's
// buffer, and tcpOpened still finds the peer's certificate.
type peekedTLS struct {
	peekedConn
	tc *tls.Conn
}

// connListener is a net.Listener fed by HandleConn, so one http.Server can
// serve connections accepted elsewhere.
type connListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   atomic.Bool
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	if !l.once.Swap(true) {
		close(l.closed)
	}
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }
