package push

import (
	"fmt"
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
	version     string
	services    map[string]string // service key -> content hash
	bundle      string
	renewBefore int64
	full        bool // a full config was accepted on this stream
	from        time.Time
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
	cfg, err := proxycfg.ForPod(gen.snap, pod, gen.rend, st.s.cfg.TrustDomain)
	if err != nil {
		return nil
	}
	b := gen.bundle
	if cfg.GetVersion() == st.acked.version && b.Version == st.acked.bundle && b.RenewIssuedBefore == st.acked.renewBefore {
		return nil
	}
	if cfg.GetVersion() == st.nacked && b.Version == st.acked.bundle && b.RenewIssuedBefore == st.acked.renewBefore {
		return nil // refused already; wait for a change
	}
	upd := &meshpb.ConfigUpdate{
		Version: cfg.GetVersion(), Nonce: strconv.FormatUint(st.nonce.Add(1), 10),
		Full: !st.acked.full, Workload: cfg.GetWorkload(), Inbound: cfg.GetInbound(),
		RenewIssuedBefore: b.RenewIssuedBefore,
	}
	visible := map[string]string{} // what the proxy will have: key -> hash
	for _, svc := range cfg.GetServices() {
		k := proxycfg.ServiceKey(svc)
		visible[k] = gen.rend.Hashes[k]
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
	if upd.Full || b.Version != st.acked.bundle {
		upd.TrustBundle, upd.TrustBundleVersion = b.DER, b.Version
	}
	st.sent = accepted{version: cfg.GetVersion(), services: visible, bundle: b.Version,
		renewBefore: b.RenewIssuedBefore, full: true}
	if !upd.Full {
		st.sent.from = gen.time // a first config measures the connection, not convergence
	}
	return upd
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
		p.observe(&meshpb.ConfigRequest{CertificateNotAfter: req.GetCertificateNotAfter(),
			CertificateIssuer: req.GetCertificateIssuer(), TrustBundleVersion: req.GetTrustBundleVersion()})
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
	certNotAfter    time.Time
	certIssuer      string
	bundle          string
}

func (p *proxy) observe(req *meshpb.ConfigRequest) {
	if req.GetResponseNonce() != "" && req.GetError() == "" {
		p.lastAck = time.Now()
	}
	if v := req.GetVersion(); v != "" {
		p.version = v
	}
	if n := req.GetCertificateNotAfter(); n > 0 {
		p.certNotAfter = time.Unix(n, 0)
	}
	if v := req.GetCertificateIssuer(); v != "" {
		p.certIssuer = v
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
	CertNotAfter time.Time `json:"certNotAfter,omitzero"`
	CertIssuer   string    `json:"certIssuer,omitempty"`
	Bundle       string    `json:"bundleVersion,omitempty"`
	WantBundle   string    `json:"wantBundleVersion,omitempty"`
}

func (p *proxy) status() ProxyStatus {
	return ProxyStatus{Namespace: p.namespace, Pod: p.name, Identity: p.identity, Connected: p.connected,
		ConnectedSince: p.since, AckedVersion: p.version, LastAck: p.lastAck, NACK: p.nack,
		CertNotAfter: p.certNotAfter, CertIssuer: p.certIssuer, Bundle: p.bundle}
}
