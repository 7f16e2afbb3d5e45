// Package controlplane is trellis-control: the certificate authority
// service, discovery and the config stream, wired together and served on
// the control plane's ports (gRPC with TLS on 15012, metrics on 15014, an
// admin API on a Unix socket for the CLI). cmd/trellis-control and
// `trellis control` (run by `trellis up`) call Run.
package controlplane

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/discovery"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
	"github.com/trellis-mesh/trellis/internal/push"
	"github.com/trellis-mesh/trellis/internal/ratelog"
	"github.com/trellis-mesh/trellis/internal/safehttp"
	"github.com/trellis-mesh/trellis/internal/tracestore"
	"github.com/trellis-mesh/trellis/internal/unixapi"
	"github.com/trellis-mesh/trellis/internal/version"
)

// Config configures the control plane. Zero fields take the defaults given.
type Config struct {
	// StateDir keeps the CA (ca/, key mode 0600), spent bootstrap tokens
	// and the admin socket. Required.
	StateDir string
	// Registry is the registry file to discover the mesh from. Required
	// unless Kubernetes is set.
	Registry string
	// Kubernetes discovers the mesh from the API server instead of a
	// registry, proves first certificates with TokenReview, keeps the CA
	// in a Secret of Namespace and serves sidecar injection on
	// WebhookAddr (see docs/kubernetes.md).
	Kubernetes bool
	// Kubeconfig connects to the API server from outside a pod; empty:
	// $KUBECONFIG, else the pod's service account.
	Kubeconfig string
	// Namespace the control plane runs in. Default $POD_NAMESPACE, else
	// trellis-system.
	Namespace string
	// WebhookAddr serves the injection webhook (TLS). Default :15017.
	WebhookAddr string
	// ProxyImage, ProxyPullPolicy and ControlPlaneAddr are what the
	// webhook injects: the sidecar's image and where it finds the control
	// plane (default trellis-control.NAMESPACE.svc:15012).
	ProxyImage, ProxyPullPolicy, ControlPlaneAddr string
	// ProxyTraces and ProxyTraceSampling are where injected sidecars send
	// their spans ("control-plane", a collector's host:port, or "" for
	// nowhere) and the percentage of requests they trace.
	ProxyTraces        string
	ProxyTraceSampling float64
	// TrustDomain of the mesh. Default cluster.local.
	TrustDomain string
	// GRPCAddr serves CertificateService and ConfigService with TLS.
	// Default :15012.
	GRPCAddr string
	// MetricsAddr serves /metrics. Default 127.0.0.1:15014.
	MetricsAddr string
	// CACert and CAKey, when set, are an operator's root or intermediate
	// (PEM files) to sign with instead of a generated root.
	CACert, CAKey string
	// SVIDTTL is the lifetime of workload certificates. Default 24 h.
	SVIDTTL time.Duration
	// Debounce coalesces bursts of changes. Default 100 ms.
	Debounce time.Duration
	// DashboardAddr serves the dashboard and its API. Default
	// 127.0.0.1:20001.
	DashboardAddr string
	// DashboardHosts are host names the dashboard answers to besides
	// localhost and IP addresses (a name in front of it, a Service's).
	DashboardHosts []string
	// MaxConns and MaxConnsPerSource cap the gRPC connections open at
	// once, in all and per client address. Default 20 000 and 256;
	// negative: no cap (benchmarks with thousands of proxies on one
	// address).
	MaxConns, MaxConnsPerSource int
	// NoDashboard serves no dashboard and so scrapes nothing: for tests
	// and benchmarks whose pods' addresses are made up (the scrape would
	// send packets to them).
	NoDashboard bool
	// ScrapeInterval: how often the sidecars' metrics are scraped into
	// the dashboard's store. Default 5 s.
	ScrapeInterval time.Duration
	// NodeAgents are the node agents' metrics URLs (e.g.
	// http://127.0.0.1:15090/metrics), scraped for the flows network
	// policy denied.
	NodeAgents []string
	// PrometheusURL, when set, makes the dashboard read a Prometheus
	// server's HTTP API (e.g. http://127.0.0.1:9090) instead of scraping
	// the sidecars itself.
	PrometheusURL string
}

// ServerID is the identity the control plane presents to proxies in trust
// domain td.
func ServerID(td string) (identity.ID, error) {
	return identity.ForWorkload(td, "trellis-system", "trellis-control")
}

// SocketPath is the admin socket in a control plane's state directory.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, "control.sock") }

func (c *Config) setDefaults() error {
	if c.StateDir == "" || (c.Registry == "") == !c.Kubernetes {
		return errors.New("control plane: a state directory (--control-state-dir) and either a registry file (--registry) or --kubernetes are required")
	}
	if c.Kubernetes {
		c.Namespace = cmp.Or(c.Namespace, os.Getenv("POD_NAMESPACE"), "trellis-system")
		c.WebhookAddr = cmp.Or(c.WebhookAddr, ":15017")
		c.ControlPlaneAddr = cmp.Or(c.ControlPlaneAddr, "trellis-control."+c.Namespace+".svc:15012")
		if c.ProxyTraceSampling < 0 || c.ProxyTraceSampling > 100 {
			return fmt.Errorf("control plane: --proxy-trace-sampling %g: give a percentage, 0 to 100", c.ProxyTraceSampling)
		}
		if c.ProxyImage == "" {
			return errors.New("control plane: --kubernetes needs the sidecar's image (--proxy-image) to inject")
		}
	}
	if (c.CACert == "") != (c.CAKey == "") {
		return errors.New("control plane: --ca-cert and --ca-key go together")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = ":15012"
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = "127.0.0.1:15014"
	}
	if c.DashboardAddr == "" {
		c.DashboardAddr = "127.0.0.1:20001"
	}
	if c.SVIDTTL <= 0 {
		c.SVIDTTL = 24 * time.Hour
	}
	if c.MaxConns == 0 {
		c.MaxConns = 20000
	}
	if c.MaxConnsPerSource == 0 {
		c.MaxConnsPerSource = 256
	}
	return nil
}

// plane is one running control plane.
type plane struct {
	cfg    Config
	keeper *ca.Keeper
	kube   *kubeMode // nil in one-host mode
	push   *push.Server
	reg    *prometheus.Registry
	id     identity.ID

	rotMu       sync.Mutex // serialises rotation steps and bundle pushes
	renewBefore int64      // guarded by rotMu: Unix seconds, 0 for none
	revoked     ca.Revocations

	certMu  sync.Mutex
	cert    *tls.Certificate // guarded by certMu: the serving certificate
	certFor *x509.Certificate

	snap atomic.Pointer[catalog.Snapshot] // the latest discovery snapshot
}

// Run runs the control plane until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	p := &plane{cfg: cfg, reg: prometheus.NewRegistry()}
	p.revoked.TTL = cfg.SVIDTTL + time.Minute // what the last renewal could still have issued
	var err error
	if p.id, err = ServerID(cfg.TrustDomain); err != nil {
		return err
	}
	var src discovery.Source
	var att ca.Attestor
	onSnapshot := func(*catalog.Snapshot) {}
	if cfg.Kubernetes {
		if p.kube, err = newKubeMode(&cfg); err != nil {
			return err
		}
		if p.keeper, err = p.kube.openKeeper(ctx, &cfg); err != nil {
			return err
		}
		ks := &kube.Source{Client: p.kube.Client, Dynamic: p.kube.Dynamic}
		host, _ := os.Hostname() // the pod's name
		ks.StatusLease.Namespace, ks.StatusLease.Name, ks.StatusLease.Identity = cfg.Namespace, kube.StatusLeaseName, host
		src = ks
		att = &kube.TokenAttestor{Client: p.kube.Client, TrustDomain: cfg.TrustDomain}
	} else {
		var supplied *ca.Authority
		if cfg.CACert != "" {
			if supplied, err = loadSupplied(cfg.CACert, cfg.CAKey, cfg.TrustDomain); err != nil {
				return err
			}
		}
		if p.keeper, err = ca.OpenKeeper(filepath.Join(cfg.StateDir, "ca"), cfg.TrustDomain, supplied); err != nil {
			return err
		}
		tokens, err := newTokenAttestor(cfg.TrustDomain, filepath.Join(cfg.StateDir, "spent-tokens"))
		if err != nil {
			return err
		}
		att, onSnapshot = tokens, tokens.setSnapshot
		src = &discovery.File{Path: cfg.Registry, OnError: func(err error) { slog.Error("discovery", "err", err) }}
	}
	// Which build answers, as istiod says it (component "pilot"): an
	// upgrade can be followed replica by replica.
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build",
		Help: "The control plane's build: component and version tag, always 1."}, []string{"component", "tag"})
	build.WithLabelValues("pilot", cmp.Or(version.Tag(), "unknown")).Set(1)
	p.reg.MustRegister(build, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p.push = push.New(push.Config{TrustDomain: cfg.TrustDomain, Debounce: cfg.Debounce, Metrics: push.NewMetrics(p.reg)})
	if at := p.keeper.ActivatedAt(); !at.IsZero() {
		p.renewBefore = at.Unix() + 1 // a rotation was activated before a restart
	}
	p.publishBundleLocked() // nothing else runs yet
	certs := p.caService(att)

	grpcSrv := p.grpcServer()
	meshpb.RegisterCertificateServiceServer(grpcSrv, certs)
	meshpb.RegisterConfigServiceServer(grpcSrv, p.push)
	traces := tracestore.New()
	droppedSpans := prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_control_spans_dropped_total",
		Help: "Spans a proxy exported that it could not have recorded (another workload's), dropped."})
	p.reg.MustRegister(droppedSpans)
	collectorpb.RegisterTraceServiceServer(grpcSrv, &tracestore.Service{Store: traces, OnDropped: func(n int) { droppedSpans.Add(float64(n)) }})
	addrs := []string{cfg.GRPCAddr, cfg.MetricsAddr}
	var webhook *http.Server
	if p.kube != nil {
		webhook = p.webhookServer()
		addrs = append(addrs, cfg.WebhookAddr)
	}
	var dash *dashboardRun
	if !cfg.NoDashboard {
		if dash, err = p.newDashboard(traces); err != nil {
			return err
		}
		addrs = append(addrs, cfg.DashboardAddr)
	}
	lns, err := listenTCP(addrs...)
	if err != nil {
		return err
	}
	adminLn, err := unixapi.Listen(SocketPath(cfg.StateDir))
	if err != nil {
		closeAll(lns)
		return fmt.Errorf("control plane: %w", err)
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{}))
	// Which proxies are connected and synced, for `trellis check` on
	// Kubernetes (through the API server's pod proxy): the admin socket's
	// GET /v1/proxies, read-only.
	metricsMux.HandleFunc("GET /debug/proxies", p.proxiesHandler)
	metricsMux.HandleFunc("GET /debug/ca", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, p.caStatus()) })
	metrics, admin := safehttp.Server(metricsMux), safehttp.Server(p.adminMux())

	g, ctx := errgroup.WithContext(ctx)
	jwks := newJWKSKeeper(p.push.Update, !cfg.Kubernetes)
	g.Go(func() error { return jwks.run(ctx) })
	g.Go(func() error {
		return src.Run(ctx, func(s *catalog.Snapshot) {
			p.snap.Store(s)
			onSnapshot(s)
			if uids, changed := p.revoked.Observe(meshedPods(s), time.Now()); changed {
				p.push.SetRevoked(uids)
			}
			jwks.update(s)
		})
	})
	g.Go(func() error { return p.push.Run(ctx) })
	g.Go(func() error {
		return grpcSrv.Serve(newLimitListener(lns[0], max(cfg.MaxConns, 0), max(cfg.MaxConnsPerSource, 0)))
	})
	g.Go(func() error { return ignoreClosed(metrics.Serve(lns[1])) })
	g.Go(func() error { return ignoreClosed(admin.Serve(adminLn)) })
	next := lns[2:]
	if webhook != nil {
		ln := next[0]
		next = next[1:]
		g.Go(func() error { return ignoreClosed(webhook.ServeTLS(ln, "", "")) })
		g.Go(func() error { return p.keepWebhookTrusted(ctx) })
		g.Go(func() error { return p.syncCA(ctx) })
	}
	if dash != nil {
		g.Go(func() error { return dash.run(ctx, next[0]) })
	}
	g.Go(func() error {
		<-ctx.Done()
		grpcSrv.Stop() // proxies reconnect to the next instance; nothing to drain
		metrics.Close()
		admin.Close()
		if webhook != nil {
			webhook.Close()
		}
		return nil
	})
	slog.Info("control plane running", "grpc", cfg.GRPCAddr, "metrics", cfg.MetricsAddr, "dashboard", cfg.DashboardAddr,
		"trustDomain", cfg.TrustDomain,
		"root", ca.Fingerprint(p.keeper.Authority().SigningCert()))
	return g.Wait()
}

// refusals logs what a caller can cause once per request (a refused
// certificate, a refused connection) at most once a second per kind.
var refusals = &ratelog.Logger{}

// listenTCP listens on every address, or on none.
func listenTCP(addrs ...string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("control plane: listen on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func loadSupplied(certPath, keyPath, td string) (*ca.Authority, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-key: %w", err)
	}
	return ca.Load(certPEM, keyPEM, td)
}

func (p *plane) caService(att ca.Attestor) *ca.Service {
	issued := prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_control_certificates_issued_total",
		Help: "Workload certificates signed."})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_control_certificates_refused_total",
		Help: "Certificate requests refused, by reason (bad_csr, not_proven, sign)."}, []string{"reason"})
	revoked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "trellis_control_revoked_pods",
		Help: "Deleted pods whose certificates proxies refuse until they expire."}, func() float64 { return float64(p.revoked.Len()) })
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "trellis_control_revocations_dropped_total",
		Help: "Deny-list entries dropped because the list was full: those certificates are refused only by expiry."},
		func() float64 { return float64(p.revoked.Dropped()) })
	p.reg.MustRegister(issued, refused, revoked, dropped)
	return &ca.Service{Keeper: p.keeper, Attestor: att, TTL: p.cfg.SVIDTTL, Reserved: []identity.ID{p.id}, Runs: p.podRuns,
		OnIssue: func(id identity.ID) { issued.Inc(); slog.Debug("certificate issued", "identity", id) },
		OnRefuse: func(reason string, err error) {
			refused.WithLabelValues(reason).Inc()
			refusals.Log(slog.LevelWarn, "certificate refused", "reason", reason, "err", err)
		}}
}

// grpcServer builds the gRPC server with TLS 1.3 and explicit limits. A
// client certificate is verified when given (config streams and renewals
// need one; a first certificate request has none).
func (p *plane) grpcServer() *grpc.Server {
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, err := p.servingCert()
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			for _, r := range p.keeper.Authority().Bundle() {
				pool.AddCert(r)
			}
			return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"},
				ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool, VerifyConnection: p.refuseRevoked}, nil
		},
	}
	return grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxConcurrentStreams(100),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxRecvMsgSize(64<<10),
		grpc.MaxHeaderListSize(64<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
}

// refuseRevoked refuses a client certificate of a deleted pod, as
// proxies do.
func (p *plane) refuseRevoked(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 {
		return nil // no client certificate: a first certificate request
	}
	if pod := identity.PodOf(cs.VerifiedChains[0][0]); p.revoked.Has(pod) {
		return fmt.Errorf("the client certificate was issued to pod %s, which has been deleted", pod)
	}
	return nil
}

// servingCert is the control plane's own certificate, issued by the
// current signer and replaced at half life or when the signer changes.
func (p *plane) servingCert() (*tls.Certificate, error) {
	p.certMu.Lock()
	defer p.certMu.Unlock()
	auth := p.keeper.Authority()
	if c := p.cert; c != nil && p.certFor.Equal(auth.SigningCert()) {
		leaf := c.Leaf
		if time.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
			return c, nil
		}
	}
	svid, err := auth.IssueServing(p.id, p.dnsNames(), 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("control plane certificate: %w", err)
	}
	cert := svid.TLSCertificate()
	// While a rotation is activated, the new root signed by the old one
	// goes along: a pod injected before the rotation trusts only the old
	// root until its first connection brings it the bundle.
	for _, c := range p.keeper.ChainExtra() {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	p.cert, p.certFor = &cert, auth.SigningCert()
	return p.cert, nil
}

// meshedPods are the UIDs of the pods in snap that run a sidecar: the
// pods certificates are issued to.
func meshedPods(snap *catalog.Snapshot) []string {
	var uids []string
	for _, pod := range snap.Pods {
		if pod.Sidecar {
			uids = append(uids, pod.UID)
		}
	}
	return uids
}

// podRuns says whether the meshed pod with UID podUID runs as id in the
// latest snapshot; for a certificate that names no pod, whether any meshed
// pod runs as id. ca.ErrNotReady before the first snapshot.
func (p *plane) podRuns(id identity.ID, podUID string) error {
	snap := p.snap.Load()
	if snap == nil {
		return ca.ErrNotReady
	}
	for _, pod := range snap.Pods {
		if !pod.Sidecar || (podUID != "" && pod.UID != podUID) {
			continue
		}
		if pid, err := proxycfg.PodIdentity(pod.Pod, p.cfg.TrustDomain); err == nil && pid == id {
			return nil
		}
	}
	if podUID != "" {
		return fmt.Errorf("the pod (UID %s) this certificate of %s was issued to does not run any more: it is not renewed", podUID, id)
	}
	return fmt.Errorf("no meshed pod runs as %s any more: its certificate is not renewed", id)
}

// dnsNames are the control plane Service's names on Kubernetes, which the
// API server checks when it calls the injection webhook; none on one host.
func (p *plane) dnsNames() []string {
	if p.kube == nil {
		return nil
	}
	svc, ns := "trellis-control", p.cfg.Namespace
	return []string{svc, svc + "." + ns, svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local"}
}

// servingTLS is the TLS of the webhook: the control plane's certificate,
// HTTP/1.1, no client certificate.
func (p *plane) servingTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.servingCert() }}
}

// publishBundleLocked hands the current trust bundle and renewal demand
// to the config stream.
func (p *plane) publishBundleLocked() {
	auth := p.keeper.Authority()
	b := push.Bundle{RenewIssuedBefore: p.renewBefore, Version: bundleVersion(auth)}
	for _, c := range auth.Bundle() {
		b.DER = append(b.DER, c.Raw)
	}
	p.push.SetBundle(b)
}

// bundleVersion names a trust bundle: a hash of its roots.
func bundleVersion(a *ca.Authority) string {
	h := sha256.New()
	for _, c := range a.Bundle() {
		h.Write(c.Raw)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
