package push

import (
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// stream is one proxy's config stream. run owns it; a receiver goroutine
// it starts feeds answers.
type stream struct {
	srv                  meshpb.ConfigService_StreamConfigServer
	s                    *Server
	key, namespace, name string
	routeChanges         bool                       // the proxy applies route_upsert and route_remove (its hello said so)
	notify               chan struct{}              // buffered(1): the generation changed
	answers              chan *meshpb.ConfigRequest // the proxy's ACKs and NACKs
	nonce                atomic.Uint64

	// Owned by run's goroutine.
	acked  accepted // what the proxy runs
	sent   accepted // what the outstanding update would make it run
	nacked string   // the version last refused: not sent again
}

// accepted is a proxy's config as far as the stream knows it.
type accepted struct {
	version  string
	services map[string]string // service key -> content hash
	routes   map[string]string // route key (meshpb.Route.Key) -> content hash
	trust    trust
	full     bool // a full config was accepted on this stream
	from     time.Time
}

// trust is the mesh-wide part of a proxy's config, by version: the trust
// bundle, the renewal demand and the deny list.
type trust struct {
	bundle      string
	renewBefore int64
	revoked     string
}

func (g *generation) trust() trust {
	return trust{bundle: g.bundle.Version, renewBefore: g.bundle.RenewIssuedBefore, revoked: g.revoked.version}
}

func (st *stream) wake() {
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

func (st *stream) run() error {
	ctx := st.srv.Context()
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := st.srv.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case st.answers <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	st.wake()
	outstanding := ""
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case req := <-st.answers:
			if req.GetResponseNonce() != outstanding || outstanding == "" {
				st.observe(req) // a status report (a renewed certificate), or stale
				continue
			}
			outstanding = ""
			st.answered(req)
		case <-st.notify:
		}
		if outstanding != "" {
			continue // one update in flight at a time; the next coalesces
		}
		upd := st.next()
		if upd == nil {
			continue
		}
		if err := st.srv.Send(upd); err != nil {
			return err
		}
		outstanding = upd.GetNonce()
		if m := st.s.cfg.Metrics; m != nil {
			m.pushed(upd.GetFull())
		}
	}
}

// next builds the update from what the proxy accepted to the current
// generation, or nil when there is nothing to send.
func (st *stream) next() *meshpb.ConfigUpdate {
	st.s.mu.Lock()
	gen := st.s.gen
	st.s.mu.Unlock()
	pod := gen.pods[st.key]
	if pod == nil {
		return nil // the pod is going away: it keeps what it has
	}
	cfg, err := proxycfg.ForPod(pod, gen.rend, st.s.cfg.TrustDomain)
	if err != nil {
		return nil
	}
	b, tr := gen.bundle, gen.trust()
	if cfg.GetVersion() == st.acked.version && tr == st.acked.trust {
		return nil
	}
	if cfg.GetVersion() == st.nacked && tr == st.acked.trust {
		return nil // refused already; wait for a change
	}
	upd := &meshpb.ConfigUpdate{
		Version: cfg.GetVersion(), Nonce: strconv.FormatUint(st.nonce.Add(1), 10),
		Full: !st.acked.full, Workload: cfg.GetWorkload(), Inbound: cfg.GetInbound(),
		Authorization: cfg.GetAuthorization(), Authentication: cfg.GetAuthentication(),
		RenewIssuedBefore: b.RenewIssuedBefore,
	}
	view := gen.rend.For(pod.Pod.Namespace) // as its namespace sees them (its DestinationRules)
	st.addRoutes(upd, cfg.GetRoutes(), view.RouteHashes)
	visible := map[string]string{} // what the proxy will have: key -> hash
	for _, svc := range cfg.GetServices() {
		k := proxycfg.ServiceKey(svc)
		visible[k] = view.Hashes[k]
		if upd.Full || st.acked.services[k] != visible[k] {
			upd.Upsert = append(upd.Upsert, svc)
		}
	}
	if !upd.Full {
		for k := range st.acked.services {
			if _, ok := visible[k]; !ok {
				upd.Remove = append(upd.Remove, k)
			}
		}
	}
	if upd.Full || tr.bundle != st.acked.trust.bundle {
		upd.TrustBundle, upd.TrustBundleVersion = b.DER, b.Version
	}
	if upd.Full || tr.revoked != st.acked.trust.revoked {
		upd.RevokedPods, upd.RevokedVersion = gen.revoked.uids, gen.revoked.version
	}
	st.sent = accepted{version: cfg.GetVersion(), services: visible, routes: view.RouteHashes, trust: tr, full: true}
	if !upd.Full {
		st.sent.from = gen.time // a first config measures the connection, not convergence
	}
	return upd
}

// addRoutes puts routes, the proxy's routes now (hashes: theirs by key),
// in upd: complete, or, when the proxy takes route changes and upd is not
// full, those that changed since the config it accepted.
func (st *stream) addRoutes(upd *meshpb.ConfigUpdate, routes []*meshpb.Route, hashes map[string]string) {
	if upd.Full || !st.routeChanges {
		upd.Routes = routes
		return
	}
	upd.RoutesIncremental = true
	for _, r := range routes {
		if st.acked.routes[r.Key()] != hashes[r.Key()] {
			upd.RouteUpsert = append(upd.RouteUpsert, r)
		}
	}
	for k := range st.acked.routes {
		if _, ok := hashes[k]; !ok {
			upd.RouteRemove = append(upd.RouteRemove, k)
		}
	}
	slices.Sort(upd.RouteRemove)
}

// answered records an ACK or NACK of the outstanding update.
func (st *stream) answered(req *meshpb.ConfigRequest) {
	m := st.s.cfg.Metrics
	if req.GetError() != "" {
		st.nacked = st.sent.version
		if m != nil {
			m.nacks.Inc()
		}
	} else {
		st.acked, st.nacked = st.sent, ""
		if m != nil && !st.sent.from.IsZero() {
			m.convergence.Observe(time.Since(st.sent.from).Seconds())
		}
	}
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	if p := st.s.proxies[st.key]; p != nil {
		p.observe(req)
		if req.GetError() != "" {
			p.nack = fmt.Sprintf("version %s: %s", st.sent.version, req.GetError())
		} else {
			p.nack = ""
		}
	}
}

// observe records what a request that answers nothing says of the proxy.
func (st *stream) observe(req *meshpb.ConfigRequest) {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	if p := st.s.proxies[st.key]; p != nil {
		p.observe(&meshpb.ConfigRequest{TrustBundleVersion: req.GetTrustBundleVersion()})
	}
}

// proxy is what the server knows of one proxy, across its streams.
// Guarded by Server.mu.
type proxy struct {
	namespace, name string
	identity        string
	connected       bool
	streams         int
	since           time.Time // connected since
	version         string    // acked
	lastAck         time.Time
	nack            string
	cert            provenCertificate
	bundle          string
}

func (p *proxy) observe(req *meshpb.ConfigRequest) {
	if req.GetResponseNonce() != "" && req.GetError() == "" {
		p.lastAck = time.Now()
	}
	if v := req.GetVersion(); v != "" {
		p.version = v
	}
	if v := req.GetTrustBundleVersion(); v != "" {
		p.bundle = v
	}
}

// ProxyStatus is one proxy as `trellis proxy-status` shows it.
type ProxyStatus struct {
	Namespace      string    `json:"namespace"`
	Pod            string    `json:"pod"`
	Identity       string    `json:"identity"`
	Connected      bool      `json:"connected"`
	ConnectedSince time.Time `json:"connectedSince,omitzero"`
	// AckedVersion is the config version the proxy last accepted;
	// WantVersion what the control plane would send it now.
	AckedVersion string    `json:"ackedVersion"`
	WantVersion  string    `json:"wantVersion"`
	LastAck      time.Time `json:"lastAck,omitzero"`
	NACK         string    `json:"nack,omitempty"`
	// CertNotAfter and CertIssuer (SHA-256 of the certificate that signed
	// it) describe the certificate the proxy's newest stream was opened
	// with: proven by its handshake, not reported.
	CertNotAfter time.Time `json:"certNotAfter,omitzero"`
	CertIssuer   string    `json:"certIssuer,omitempty"`
	Bundle       string    `json:"bundleVersion,omitempty"`
	WantBundle   string    `json:"wantBundleVersion,omitempty"`
}

func (p *proxy) status() ProxyStatus {
	return ProxyStatus{Namespace: p.namespace, Pod: p.name, Identity: p.identity, Connected: p.connected,
		ConnectedSince: p.since, AckedVersion: p.version, LastAck: p.lastAck, NACK: p.nack,
		CertNotAfter: p.cert.notAfter, CertIssuer: p.cert.issuer, Bundle: p.bundle}
}
