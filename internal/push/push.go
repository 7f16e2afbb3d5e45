// Package push is the control plane's config stream server
// (ConfigService in proto/trellis/v1/control.proto): one stream per proxy,
// each sent a full config first and then only what changed since the last
// config it accepted, one update at a time, ACKed or NACKed.
//
// Snapshots arrive through Update, are debounced, rendered once for all
// proxies (internal/proxycfg) and handed to each stream through a slot of
// one: a slow proxy only ever has the newest state waiting, so it never
// blocks others or holds more than one pending config.
//
// The control plane binary (internal/controlplane) imports it.
package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// Bundle is the trust bundle proxies must hold, and the renewal demand of
// a root rotation.
type Bundle struct {
	DER     [][]byte
	Version string
	// RenewIssuedBefore: certificates issued before it must be renewed
	// (Unix seconds); 0 for none.
	RenewIssuedBefore int64
}

// Config configures a Server. Zero fields take the defaults given.
type Config struct {
	// TrustDomain of the mesh's identities. Required.
	TrustDomain string
	// Debounce: a burst of snapshots is pushed once it has been quiet this
	// long (at most 10× this after its first change). Default 100 ms.
	Debounce time.Duration
	// MaxStreams bounds the streams served at once; more are refused with
	// RESOURCE_EXHAUSTED. Default 20000.
	MaxStreams int
	// HelloTimeout is how long a new stream may take to name its pod.
	// Default 10 s.
	HelloTimeout time.Duration
	// Metrics observes pushes and ACKs; optional.
	Metrics *Metrics
}

// Server serves ConfigService. Create it with New; feed it with Update and
// SetBundle; call Run once.
type Server struct {
	meshpb.UnimplementedConfigServiceServer
	cfg    Config
	kick   chan struct{} // buffered(1): a snapshot or bundle arrived
	limit  chan struct{} // a token per stream served
	rendMu sync.Mutex    // serialises rendering in Run

	mu      sync.Mutex
	pending *catalog.Snapshot  // guarded by mu: newest snapshot, not yet rendered
	bundle  Bundle             // guarded by mu
	revoked revoked            // guarded by mu
	gen     *generation        // guarded by mu: what streams send from; nil before the first snapshot
	genWait chan struct{}      // guarded by mu: closed when gen is first set
	proxies map[string]*proxy  // guarded by mu: by pod key, connected or last seen
	streams map[*stream]string // guarded by mu: live streams, by pod key
}

var _ meshpb.ConfigServiceServer = (*Server)(nil)

// generation is one rendered snapshot: immutable, shared by all streams.
type generation struct {
	snap    *catalog.Snapshot
	pods    map[string]*catalog.RunningPod // snap's pods by "namespace/name"
	rend    *proxycfg.Rendered
	bundle  Bundle
	revoked revoked
	time    time.Time // when the change reached the source, for convergence
}

// revoked is the deny list proxies must hold, and its version.
type revoked struct {
	uids    []string
	version string
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 20000
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 10 * time.Second
	}
	return &Server{cfg: cfg, kick: make(chan struct{}, 1), limit: make(chan struct{}, cfg.MaxStreams),
		genWait: make(chan struct{}), proxies: map[string]*proxy{}, streams: map[*stream]string{}}
}

// Update hands the server a new snapshot; it never blocks. Called by the
// discovery source's goroutine.
func (s *Server) Update(snap *catalog.Snapshot) {
	s.mu.Lock()
	s.pending = snap
	s.mu.Unlock()
	s.poke()
}

// SetBundle changes the trust bundle (and renewal demand) every proxy must
// hold; pushed without debounce.
func (s *Server) SetBundle(b Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle = b
	s.amendLocked(func(g *generation) { g.bundle = b })
}

// SetRevoked changes the deny list every proxy must hold: the UIDs of
// deleted pods whose certificates may still be valid (see ca.Revocations).
// Pushed without debounce.
func (s *Server) SetRevoked(podUIDs []string) {
	h := sha256.New()
	for _, uid := range podUIDs {
		h.Write([]byte(uid + "\n"))
	}
	r := revoked{uids: slices.Clone(podUIDs), version: hex.EncodeToString(h.Sum(nil))[:16]}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = r
	s.amendLocked(func(g *generation) { g.revoked = r })
}

// amendLocked makes a generation that differs from the current one by
// change, and wakes every stream to send it.
func (s *Server) amendLocked(change func(*generation)) {
	if s.gen == nil {
		return // the first snapshot's generation takes it
	}
	g := *s.gen
	change(&g)
	g.time = time.Now()
	s.gen = &g
	s.wakeAllLocked()
}

func (s *Server) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run renders debounced snapshots and wakes the streams until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		s.debounce(ctx)
		s.render()
	}
}

// debounce waits until no snapshot has arrived for Debounce, or 10×
// Debounce since the first, whichever is sooner.
func (s *Server) debounce(ctx context.Context) {
	deadline := time.Now().Add(10 * s.cfg.Debounce)
	quiet := time.NewTimer(s.cfg.Debounce)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			wait := min(s.cfg.Debounce, time.Until(deadline))
			if wait <= 0 {
				return
			}
			quiet.Reset(wait)
		case <-quiet.C:
			return
		}
	}
}

func (s *Server) render() {
	s.rendMu.Lock()
	defer s.rendMu.Unlock()
	s.mu.Lock()
	snap := s.pending
	s.pending = nil
	s.mu.Unlock()
	if snap == nil {
		return
	}
	rend := proxycfg.Render(snap, s.cfg.TrustDomain)
	pods := make(map[string]*catalog.RunningPod, len(snap.Pods))
	for _, p := range snap.Pods {
		pods[p.Key()] = p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	first := s.gen == nil
	s.gen = &generation{snap: snap, pods: pods, rend: rend, bundle: s.bundle, revoked: s.revoked, time: snap.Time}
	if first {
		close(s.genWait)
	}
	for key, p := range s.proxies {
		if !p.connected && pods[key] == nil {
			delete(s.proxies, key) // gone while disconnected
		}
	}
	s.wakeAllLocked()
}

func (s *Server) wakeAllLocked() {
	for st := range s.streams {
		st.wake()
	}
}

// current returns the generation streams send from, waiting for the first.
func (s *Server) current(ctx context.Context) (*generation, error) {
	s.mu.Lock()
	wait := s.genWait
	s.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, nil
}

// StreamConfig implements ConfigService.StreamConfig (see control.proto).
func (s *Server) StreamConfig(srv meshpb.ConfigService_StreamConfigServer) error {
	select {
	case s.limit <- struct{}{}:
		defer func() { <-s.limit }()
	default:
		return status.Errorf(codes.ResourceExhausted, "the control plane serves %d streams already", s.cfg.MaxStreams)
	}
	ctx := srv.Context()
	id, err := ca.ClientIdentity(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "config stream: %v: connect with the proxy's certificate", err)
	}
	hello, err := recvWithin(srv, s.cfg.HelloTimeout)
	if err != nil {
		return err
	}
	if hello.GetPodNamespace() == "" || hello.GetPodName() == "" {
		return status.Error(codes.InvalidArgument, "config stream: the first request must name the proxy's pod (pod_namespace, pod_name)")
	}
	gen, err := s.current(ctx)
	if err != nil {
		return status.FromContextError(err).Err()
	}
	key := hello.GetPodNamespace() + "/" + hello.GetPodName()
	pod := gen.pods[key]
	if pod == nil {
		return status.Errorf(codes.NotFound, "config stream: pod %s is not known to the control plane (yet)", key)
	}
	if want, err := proxycfg.PodIdentity(pod.Pod, s.cfg.TrustDomain); err != nil || want != id {
		return status.Errorf(codes.PermissionDenied, "config stream: pod %s runs as %s, not as %s", key, want, id)
	}
	st := &stream{srv: srv, s: s, key: key, namespace: hello.GetPodNamespace(), name: hello.GetPodName(),
		routeChanges: hello.GetRouteChanges(), notify: make(chan struct{}, 1), answers: make(chan *meshpb.ConfigRequest, 1)}
	if !s.connect(st, id.String(), hello, provenCert(ctx)) {
		return status.Errorf(codes.ResourceExhausted, "config stream: pod %s has %d streams open already", key, MaxStreamsPerPod)
	}
	defer s.disconnect(st)
	slog.Info("proxy connected", "pod", key, "identity", id, "version", hello.GetVersion())
	return st.run()
}

// provenCertificate is what a proxy's handshake proved of the
// certificate it holds.
type provenCertificate struct {
	notAfter time.Time
	issuer   string // SHA-256 (hex) of the certificate that signed it
}

// provenCert reads the certificate a stream's connection was made with.
func provenCert(ctx context.Context) provenCertificate {
	chain, err := ca.ClientChain(ctx)
	if err != nil || len(chain) < 2 {
		return provenCertificate{}
	}
	return provenCertificate{notAfter: chain[0].NotAfter, issuer: ca.Fingerprint(chain[1])}
}

// recvWithin receives one request, giving up after d.
func recvWithin(srv meshpb.ConfigService_StreamConfigServer, d time.Duration) (*meshpb.ConfigRequest, error) {
	type result struct {
		req *meshpb.ConfigRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		req, err := srv.Recv()
		ch <- result{req, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.req, r.err
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "config stream: no hello within %s", d)
	}
}

// MaxStreamsPerPod bounds the config streams one pod's identity may hold
// open: its proxy needs one, and a few while a reconnect overlaps the old
// stream's end.
const MaxStreamsPerPod = 4

// connect registers a stream, or reports false when its pod holds
// MaxStreamsPerPod already.
func (s *Server) connect(st *stream, id string, hello *meshpb.ConfigRequest, cert provenCertificate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proxies[st.key]
	if p == nil {
		p = &proxy{namespace: st.namespace, name: st.name}
		s.proxies[st.key] = p
	}
	if p.streams >= MaxStreamsPerPod {
		return false
	}
	p.identity, p.connected, p.since, p.nack = id, true, time.Now(), ""
	p.cert = cert // the newest stream's handshake: a proxy opens one after each renewal
	p.observe(hello)
	p.streams++
	s.streams[st] = st.key
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.connected.Inc()
	}
	return true
}

func (s *Server) disconnect(st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, st)
	if p := s.proxies[st.key]; p != nil {
		p.streams--
		p.connected = p.streams > 0
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.connected.Dec()
	}
}

// Status lists every proxy known: connected, or disconnected while its pod
// still exists. For `trellis proxy-status`.
func (s *Server) Status() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for _, p := range s.proxies {
		ps := p.status()
		if s.gen != nil {
			if pod := s.gen.pods[p.namespace+"/"+p.name]; pod != nil {
				if cfg, err := proxycfg.ForPod(pod, s.gen.rend, s.cfg.TrustDomain); err == nil {
					ps.WantVersion = cfg.GetVersion()
				}
			}
			ps.WantBundle = s.gen.bundle.Version
		}
		out = append(out, ps)
	}
	return out
}
