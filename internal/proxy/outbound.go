package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/balancer"
	"github.com/trellis-mesh/trellis/internal/identity"
	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/rawio"
	routing "github.com/trellis-mesh/trellis/internal/route"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Outbound forwards the app's HTTP requests to a service's endpoints,
// balancing every request (not every connection) and carrying it to the
// endpoint's sidecar over pooled, multiplexed HTTP/2 with mutual TLS.
// Endpoints without a sidecar get plaintext HTTP/1.1. Safe for concurrent
// use; Update swaps the routing table atomically.
type Outbound struct {
	// Metrics records every request (reporter "source"); nil records nothing.
	Metrics *telemetry.Metrics
	// AccessLog gets an entry per request; nil logs nothing.
	AccessLog *slog.Logger
	// Tracing makes every request a client span; nil only propagates
	// nothing and records no span.
	Tracing *telemetry.Tracing
	// WriteIdleTimeout cuts off a response whose writes make no progress
	// for that long (a client that stopped reading); 0 never does.
	WriteIdleTimeout time.Duration

	store *meshtls.Store
	dial  *net.Dialer // carries the proxy's socket mark

	routes      atomic.Pointer[routeTable]
	engineConns engineConns       // the engine's app HTTP/1.1 connections
	h2Conns     connSet[*h2.Conn] // the engine's app HTTP/2 connections: a drain sends GOAWAY

	mu    sync.Mutex                  // serialises Update
	ports map[portStateKey]*portState // guarded by mu: kept across updates

	mirrorSlots mirrorSlots

	pool    *meshPool       // the engine's mTLS h2 connections to sidecars
	mesh    *http.Transport // mTLS h2 to sidecars, one pool per endpoint
	upgrade *http.Transport // mTLS HTTP/1.1 to sidecars, a connection per Upgrade request
	plain   *http.Transport // to endpoints outside the mesh
	proxy   *httputil.ReverseProxy
}

// portStateKey identifies a portState that may outlive a config: the same
// service port (or the same subset of it) under the same policies.
type portStateKey struct {
	dst     netip.AddrPort
	subset  string // "": the service port's own endpoints
	policy  balancer.Policy
	outlier balancer.Outlier
	limits  circuitLimits // on HTTP and gRPC requests
	conns   circuitLimits // on opaque TCP connections (maxPending 0)
	budget  budgetLimits  // of retries
}

// portState is what a service port keeps across configs while its policies
// stay: its endpoints' statistics, its retry budget, the requests in
// flight and the TCP connections open under its connection pool limits.
type portState struct {
	bal     *balancer.Balancer
	budget  *retryBudget
	circuit *circuit // nil: no limits on requests
	conns   *circuit // nil: no limit on TCP connections
}

// routeTable is one config's routes, immutable once built.
type routeTable struct {
	byVIP      map[netip.AddrPort]*route
	byService  map[svcPort]*route        // the same routes by name, and one per subset, for routes' backends
	identities map[string]identity.ID    // endpoint "ip:port" -> expected identity
	peers      map[string]telemetry.Peer // endpoint "ip:port" -> its workload, for metrics
	self       telemetry.Peer
}

// route is one service port, or the endpoints of one of its service's
// subsets there (reached only as a route's backend).
type route struct {
	service         string // "name.namespace", for errors
	host            string // "name.namespace.svc.cluster.local", for metrics
	name, namespace string
	protocol        meshpb.Protocol
	bal             *balancer.Balancer
	meta            string // the caller's metadata for this service (encodePeer), sent to meshed endpoints
	// outside: some endpoint has no sidecar (no identity); it takes
	// plain HTTP, which the engine leaves to net/http.
	outside bool
	// table holds the Gateway API routes attached to the service port;
	// nil: none, requests are balanced over its own endpoints.
	table *routing.Table
	// resilient: a rule of table asks for timeouts, retries or mirrors,
	// or the service port (or a backend of its routes) has connection
	// pool limits: the engine leaves its requests to net/http
	// (resilience.go, circuit.go).
	resilient bool
	budget    *retryBudget // retries to this service port
	circuit   *circuit     // nil: no connection pool limits on requests
	conns     *circuit     // nil: no limit on the TCP connections tunnelled (listener.go)
}

// NewOutbound returns an outbound forwarder that presents store's SVID and
// dials with d (which should set the proxy's socket mark).
func NewOutbound(store *meshtls.Store, d *net.Dialer) *Outbound {
	o := &Outbound{store: store, dial: d, ports: map[portStateKey]*portState{}}
	o.routes.Store(&routeTable{byVIP: map[netip.AddrPort]*route{}, identities: map[string]identity.ID{},
		peers: map[string]telemetry.Peer{}, self: telemetry.Unknown})
	h2only := new(http.Protocols)
	h2only.SetHTTP2(true)
	o.mesh = &http.Transport{
		DialTLSContext:    o.dialMesh("h2"),
		Protocols:         h2only,
		ForceAttemptHTTP2: true,
		IdleConnTimeout:   time.Hour,
		// Keep pooled upstream connections checked.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 5 * time.Second},
	}
	// WebSocket and other Upgrades need a connection of their own that
	// becomes a byte stream after 101: HTTP/1.1 over mTLS, never pooled.
	h1only := new(http.Protocols)
	h1only.SetHTTP1(true)
	o.upgrade = &http.Transport{
		DialTLSContext:        o.dialMesh("http/1.1"),
		Protocols:             h1only,
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: 15 * time.Second,
	}
	o.plain = &http.Transport{
		DialContext:           d.DialContext,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       time.Hour,
		ResponseHeaderTimeout: 15 * time.Second,
	}
	meshDial := o.dialMesh("h2")
	o.pool = &meshPool{cfg: h2.Config{IdleTimeout: time.Hour}, dial: func(addr string) (net.Conn, error) {
		return meshDial(context.Background(), "tcp", addr)
	}}
	o.proxy = &httputil.ReverseProxy{
		Rewrite:   func(*httputil.ProxyRequest) {}, // RoundTrip sets the endpoint
		Transport: o,
		// No FlushInterval: a response of unknown length (gRPC, streams,
		// server-sent events) is flushed as each piece arrives anyway, and
		// one of known length goes out in as few writes as it fills, not
		// one write for the body and another for its end.
		BufferPool:     copyBuffers,
		ModifyResponse: stepAsideOnSwitch,
		ErrorHandler:   o.fail,
	}
	return o
}

// Update installs cfg's services. Balancers of service ports that stay keep
// their statistics; in-flight requests finish on the endpoints they had.
func (o *Outbound) Update(cfg *meshpb.ProxyConfig) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := &routeTable{byVIP: map[netip.AddrPort]*route{}, byService: map[svcPort]*route{}, identities: map[string]identity.ID{},
		peers: map[string]telemetry.Peer{}, self: selfPeer(cfg.GetWorkload())}
	keep := map[portStateKey]*portState{}
	services := map[[2]string]*meshpb.Service{} // by namespace and name
	for _, s := range cfg.GetServices() {
		services[[2]string{s.GetNamespace(), s.GetName()}] = s
		vip, err := netip.ParseAddr(s.GetVip())
		if err != nil {
			continue // Validate refused it already
		}
		for _, p := range s.GetPorts() {
			dst := netip.AddrPortFrom(vip, uint16(p.GetPort()))
			for _, e := range p.GetEndpoints() {
				addr := endpointAddr(e)
				t.peers[addr] = endpointPeer(e)
				if id, err := identity.Parse(e.GetIdentity()); err == nil {
					t.identities[addr] = id
				}
			}
			key := stateKey(dst, "", s.GetLoadBalancing(), s.GetTrafficPolicy())
			r := o.portRoute(t, keep, key, s, p, p.GetEndpoints())
			t.byVIP[dst] = r
			t.byService[svcPort{s.GetNamespace(), s.GetName(), uint16(p.GetPort()), ""}] = r
		}
	}
	// A subset's route, made when a route sends to it.
	t.compileRoutes(cfg, func(b routing.Backend) *route {
		s := services[[2]string{b.Namespace, b.Name}]
		vip, err := netip.ParseAddr(s.GetVip())
		if err != nil {
			return nil
		}
		i := slices.IndexFunc(s.GetPorts(), func(p *meshpb.ServicePort) bool { return p.GetPort() == uint32(b.Port) })
		sub := s.SubsetNamed(b.Subset)
		if i < 0 || sub == nil {
			return nil
		}
		p := s.GetPorts()[i]
		key := stateKey(netip.AddrPortFrom(vip, uint16(p.GetPort())), sub.GetName(), sub.GetLoadBalancing(), sub.GetTrafficPolicy())
		return o.portRoute(t, keep, key, s, p, sub.Select(p.GetEndpoints()))
	})
	o.ports = keep
	old := o.routes.Swap(t)
	for addr := range old.peers {
		if _, ok := t.peers[addr]; !ok {
			// An endpoint left. Its address may soon be another pod's: a
			// pooled connection to the one that left must not carry a
			// request there, so idle ones go now (busy ones finish; a
			// dead peer's are found by the HTTP/2 ping).
			o.mesh.CloseIdleConnections()
			o.plain.CloseIdleConnections()
			break
		}
	}
	o.pool.retire(func(addr string) bool { _, ok := t.identities[addr]; return ok })
}

// portRoute is the route of service port p of s over eps (its endpoints,
// or a subset's), under key's policies: with the portState the last
// config had for key, else a new one, kept in keep. t holds eps's
// identities already. Its metrics are the service's, whatever the subset.
func (o *Outbound) portRoute(t *routeTable, keep map[portStateKey]*portState, key portStateKey, s *meshpb.Service, p *meshpb.ServicePort, eps []*meshpb.Endpoint) *route {
	up := o.ports[key]
	if up == nil {
		up = newPortState(key)
	}
	keep[key] = up
	addrs := make([]string, 0, len(eps))
	outside := false
	for _, e := range eps {
		addr := endpointAddr(e)
		addrs = append(addrs, addr)
		if _, meshed := t.identities[addr]; !meshed {
			outside = true
		}
	}
	up.bal.Update(addrs)
	r := &route{service: s.GetName() + "." + s.GetNamespace(),
		host: s.GetName() + "." + s.GetNamespace() + ".svc.cluster.local", name: s.GetName(), namespace: s.GetNamespace(),
		protocol: p.GetProtocol(), bal: up.bal, outside: outside, budget: up.budget, circuit: up.circuit,
		conns: up.conns, resilient: up.circuit != nil}
	if key.subset != "" {
		r.service += " subset " + key.subset
	}
	r.meta = encodePeer(t.self, r.host, s.GetName(), s.GetNamespace())
	return r
}

func endpointAddr(e *meshpb.Endpoint) string {
	return net.JoinHostPort(e.GetAddress(), fmt.Sprint(e.GetPort()))
}

func newPortState(key portStateKey) *portState {
	b, _ := balancer.New(key.policy, key.outlier) // policy is one of lbPolicy's
	up := &portState{bal: b, budget: &retryBudget{budgetLimits: key.budget}}
	if key.limits.maxActive > 0 {
		up.circuit = &circuit{circuitLimits: key.limits}
	}
	if key.conns.maxActive > 0 {
		up.conns = &circuit{circuitLimits: key.conns}
	}
	return up
}

// stateKey is the portStateKey of service port dst, or of its subset,
// under the load balancing and traffic policy the config gives it.
func stateKey(dst netip.AddrPort, subset string, lb meshpb.LoadBalancing, tp *meshpb.TrafficPolicy) portStateKey {
	return portStateKey{dst: dst, subset: subset, policy: lbPolicy(lb), outlier: outlierOf(tp),
		limits: limitsOf(tp), conns: connLimitsOf(tp), budget: budgetOf(tp)}
}

// budgetOf is the retry budget a traffic policy sets; the default when it
// sets none.
func budgetOf(tp *meshpb.TrafficPolicy) budgetLimits {
	rb := tp.GetRetryBudget()
	if rb == nil {
		return defaultBudget
	}
	return budgetLimits{ratio: rb.GetPercent() / 100, floor: int(rb.GetMinRetriesPerSecond())}
}

// outlierOf is the ejection a traffic policy asks for; the zero Outlier
// (the default) when it says none.
func outlierOf(tp *meshpb.TrafficPolicy) balancer.Outlier {
	od := tp.GetOutlierDetection()
	if od == nil {
		return balancer.Outlier{}
	}
	return balancer.Outlier{Consecutive: int(od.GetConsecutive_5Xx()), ConsecutiveGateway: int(od.GetConsecutiveGateway()),
		BaseEjection: time.Duration(od.GetBaseEjectionMs()) * time.Millisecond, MaxEjectionPercent: int(od.GetMaxEjectionPercent())}
}

// limitsOf is the connection pool limits a traffic policy sets; zero
// (none) when it sets none.
func limitsOf(tp *meshpb.TrafficPolicy) circuitLimits {
	cp := tp.GetConnectionPool()
	if cp.GetMaxRequests() == 0 {
		return circuitLimits{}
	}
	return circuitLimits{maxActive: int(cp.GetMaxRequests()), maxPending: int(cp.GetMaxPending()), source: tp.GetSource()}
}

// connLimitsOf is the limit a traffic policy sets on TCP connections;
// zero (none) when it sets none. None wait: a tunnel takes its slot with
// tryEnter.
func connLimitsOf(tp *meshpb.TrafficPolicy) circuitLimits {
	n := tp.GetConnectionPool().GetMaxConnections()
	if n == 0 {
		return circuitLimits{}
	}
	return circuitLimits{maxActive: int(n), source: tp.GetSource()}
}

func lbPolicy(lb meshpb.LoadBalancing) balancer.Policy {
	switch lb {
	case meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST:
		return balancer.LeastRequest
	case meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN:
		return balancer.RoundRobin
	}
	return balancer.P2CPeakEWMA
}

// serviceAddr returns the address of a service port of the current config.
func (o *Outbound) serviceAddr(name, namespace string, port uint16) (netip.AddrPort, bool) {
	for dst, r := range o.routes.Load().byVIP {
		if r.name == name && r.namespace == namespace && dst.Port() == port {
			return dst, true
		}
	}
	return netip.AddrPort{}, false
}

type dstKey struct{}

// WithDestination records the service address a request was sent to, as
// the listener learned it (SO_ORIGINAL_DST, or an explicit listener's
// upstream). ServeHTTP routes on it.
func WithDestination(ctx context.Context, dst netip.AddrPort) context.Context {
	return context.WithValue(ctx, dstKey{}, dst)
}

// ServeHTTP forwards one request from the app and records it.
func (o *Outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer countPanics()
	start := time.Now()
	ex := &exchange{dest: telemetry.Unknown}
	ow, body := observe(w, r, o.WriteIdleTimeout)
	r.Header.Del(peerHeader)    // only sidecars set it
	r.Header.Del(attemptHeader) // nor this: set when a route retries
	r, ex.span = o.Tracing.Start(r, trace.SpanKindClient)
	defer recordAfter(recorder{o.Metrics, o.AccessLog, o.Tracing}, "source", o.routes.Load().self, &ex.dest, ex, r, ow, body, start)
	if !checkRequest(ow, r, ex) || cancelledEarly(r, ex) {
		return
	}
	ctx := context.WithValue(r.Context(), exchangeKey{}, ex)
	dst, _ := r.Context().Value(dstKey{}).(netip.AddrPort)
	rt := o.routes.Load()
	if base := rt.byVIP[dst]; base != nil && base.table != nil {
		to, ok := r.Context().Value(backendKey{}).(routedTo) // the engine's decision, bridged
		if !ok {
			to.r, to.d = rt.routed(base, httpView(r))
		}
		d := &to.d
		if d.Status != 0 {
			flag, reason := routeRefusal(*d)
			if d.Location != "" {
				ow.Header().Set("Location", d.Location)
			}
			if protocolOf(r) == "grpc" && d.GRPCStatus != 0 {
				failGRPC(ow, ex, d.GRPCStatus, flag, reason)
			} else {
				failWith(ow, ex, d.Status, flag, reason)
			}
			return
		}
		applyRouteHTTP(r, *d)
		if r.Header.Get("Upgrade") != "" { // a byte stream after 101: no timeouts, retries nor copies
			d.Timeouts, d.Retry, d.Mirrors = routing.Timeouts{}, nil, nil
		}
		if d.Delay > 0 && !injectDelay(r, ex, d.Delay) {
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = withRequestTimeout(ctx, r, *d)
		defer cancel()
		ctx = context.WithValue(ctx, backendKey{}, to)
	}
	o.proxy.ServeHTTP(ow, r.WithContext(ctx))
}

// backendKey carries where a route sent a request (routedTo).
type backendKey struct{}

// routedTo is the service port a route sent a request to, and the
// decision that sent it there.
type routedTo struct {
	r *route
	d routing.Decision
}

// RoundTrip picks an endpoint for this request and sends it there. It is
// the ReverseProxy's transport.
func (o *Outbound) RoundTrip(req *http.Request) (*http.Response, error) {
	dst, _ := req.Context().Value(dstKey{}).(netip.AddrPort)
	rt := o.routes.Load()
	r, ok := rt.byVIP[dst]
	to, routed := req.Context().Value(backendKey{}).(routedTo)
	if routed {
		r, ok = to.r, true
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s is not a service this proxy knows", errNoRoute, dst)
	}
	ex, _ := req.Context().Value(exchangeKey{}).(*exchange)
	if ex == nil {
		ex = &exchange{}
	}
	ex.service, ex.svcName, ex.svcNS = r.host, r.name, r.namespace
	var resp *http.Response
	var err error
	if to.d.Resilient() {
		resp, err = o.resilient(req, r, rt, ex, to.d)
	} else {
		resp, _, err = o.attempt(req, r, rt, ex)
	}
	if err != nil {
		return nil, err
	}
	grpcTrailersOnly(resp)
	if resp.StatusCode >= 200 {
		to.d.ResponseHeaders.Apply(resp.Header)
	}
	return resp, nil
}

// attempt sends req to an endpoint of r, picked avoiding those tried (by
// earlier attempts), and returns the endpoint with the outcome.
func (o *Outbound) attempt(req *http.Request, r *route, rt *routeTable, ex *exchange, tried ...*balancer.Endpoint) (*http.Response, *balancer.Endpoint, error) {
	if r.circuit == nil {
		return o.send(req, r, rt, ex, tried)
	}
	leave, err := r.circuit.enter(req.Context())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r.service, err)
	}
	resp, ep, err := o.send(req, r, rt, ex, tried)
	if err != nil {
		leave()
		return nil, ep, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		leave() // a byte stream now (its body the connection), not a request
		return resp, ep, nil
	}
	resp.Body = &closeCalls{ReadCloser: resp.Body, fn: leave} // in flight until its body is done
	return resp, ep, nil
}

// send is attempt's request to one endpoint, once the connection pool let
// it in.
func (o *Outbound) send(req *http.Request, r *route, rt *routeTable, ex *exchange, tried []*balancer.Endpoint) (*http.Response, *balancer.Endpoint, error) {
	ep, err := r.bal.Pick(tried...)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r.service, err)
	}
	if peer, ok := rt.peers[ep.Addr]; ok {
		ex.dest = peer
	}
	ex.upstream = ep.Addr
	done := ep.Start()
	start := time.Now()
	// A request that had to open a connection carries the handshake in its
	// latency: keep it out of the endpoint's latency estimate.
	var reused atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused.Store(info.Reused) },
	}))
	req.URL.Host = ep.Addr
	var resp *http.Response
	if _, meshed := rt.identities[ep.Addr]; meshed {
		ex.mutualTLS = true
		req.URL.Scheme = "https"
		req.Header.Set(peerHeader, r.meta)
		if req.Header.Get("Upgrade") != "" { // ReverseProxy keeps it only on upgrade requests
			resp, err = o.upgrade.RoundTrip(req)
		} else {
			resp, err = o.mesh.RoundTrip(req)
		}
	} else {
		req.URL.Scheme = "http"
		resp, err = o.plain.RoundTrip(req)
	}
	code, latency := 0, time.Duration(0)
	if err == nil {
		code = answerCode(req, resp)
	}
	if reused.Load() {
		latency = time.Since(start)
	}
	res := balancer.HTTPResult(code, err != nil, latency)
	// A client that went away, or whose request body broke off, says
	// nothing of the endpoint.
	res.Abandoned = err != nil && (errors.Is(req.Context().Err(), context.Canceled) || errors.Is(err, errAttemptOver))
	done(res)
	if err != nil {
		if cause := context.Cause(req.Context()); errors.Is(cause, context.DeadlineExceeded) {
			err = cause // the route's timeout, not how the transport saw it
		}
		return nil, ep, fmt.Errorf("%s: endpoint %s: %w", r.service, ep.Addr, err)
	}
	return resp, ep, nil
}

var errNoRoute = errors.New("no route")

// dialMesh returns a transport's dialer of mTLS connections to endpoints'
// sidecars speaking alpn, requiring the identity the config names for each
// endpoint.
func (o *Outbound) dialMesh(alpn string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		want, ok := o.routes.Load().identities[addr]
		if !ok {
			return nil, fmt.Errorf("dial %s: endpoint left the config", addr)
		}
		cfg := meshtls.ClientConfig(o.store, meshtls.Exactly(want))
		cfg.NextProtos = []string{alpn}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := o.dial.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(rawio.Wrap(c), cfg) // raw I/O under TLS: fewer thread hand-offs
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
}

// fail answers a request the proxy could not forward, saying why.
func (o *Outbound) fail(w http.ResponseWriter, r *http.Request, err error) {
	if cause := context.Cause(r.Context()); errors.Is(cause, errRequestTimeout) {
		err = cause
	} else if clientGone(r, err) {
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The request body may still be coming: the answer goes out now,
		// and net/http must not wait to read the rest first.
		w.Header().Set("Connection", "close")
	}
	code, flag := http.StatusServiceUnavailable, "UF" // upstream connection failure
	switch {
	case errors.Is(err, balancer.ErrNoEndpoints):
		flag = "UH" // no healthy upstream
	case errors.Is(err, errOverflow):
		flag = "UO" // upstream overflow: the connection pool is full
	case errors.Is(err, errNoRoute):
		code, flag = http.StatusNotFound, "NR"
	case errors.Is(err, context.DeadlineExceeded):
		code, flag = http.StatusGatewayTimeout, "UT"
	}
	if protocolOf(r) == "grpc" {
		failGRPC(w, exchangeOf(r), grpcStatusOf(code), flag, err.Error())
		return
	}
	failWith(w, exchangeOf(r), code, flag, err.Error())
}

type tlsDialer struct {
	net *net.Dialer
	cfg *tls.Config
}

func (d *tlsDialer) dial(addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return (&tls.Dialer{NetDialer: d.net, Config: d.cfg}).DialContext(ctx, "tcp", addr)
}

func resultOf(start time.Time, err error) balancer.Result {
	return balancer.Result{Latency: time.Since(start), Failed: err != nil, Gateway: err != nil}
}

// ClusterStatus is one service port's endpoints, or one subset's of them,
// as the admin port shows them.
type ClusterStatus struct {
	Service   string           `json:"service"`
	Address   string           `json:"address"`
	Subset    string           `json:"subset,omitempty"` // a balancer a route sends to (DestinationRule subsets)
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint's live state.
type EndpointStatus struct {
	Address  string `json:"address"`
	Identity string `json:"identity,omitempty"`
	InFlight int64  `json:"inFlight"`
	Ejected  bool   `json:"ejected"`
}

// clusters is every balancer of the config, its service ports' and its
// routed subsets', in order.
func (o *Outbound) clusters() []ClusterStatus {
	rt := o.routes.Load()
	var out []ClusterStatus
	status := func(r *route, dst netip.AddrPort, subset string) {
		cs := ClusterStatus{Service: r.name + "." + r.namespace, Address: dst.String(), Subset: subset}
		for _, e := range r.bal.Endpoints() {
			cs.Endpoints = append(cs.Endpoints, EndpointStatus{Address: e.Addr, Identity: rt.identities[e.Addr].String(),
				InFlight: e.InFlight(), Ejected: e.Ejected()})
		}
		out = append(out, cs)
	}
	vips := make(map[*route]netip.AddrPort, len(rt.byVIP))
	for dst, r := range rt.byVIP {
		vips[r] = dst
		status(r, dst, "")
	}
	for k, r := range rt.byService {
		if k.subset != "" {
			status(r, vips[rt.byService[svcPort{k.namespace, k.name, k.port, ""}]], k.subset)
		}
	}
	slices.SortFunc(out, func(a, b ClusterStatus) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Address, b.Address), strings.Compare(a.Subset, b.Subset))
	})
	return out
}
