package controlclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
)

// MaxRevokedPods bounds the deny list a config update may carry.
const MaxRevokedPods = 100_000

// deniedGrace is how long a refused bootstrap token is retried.
const deniedGrace = 3 * time.Second

// ErrTokenSpent means the bootstrap token was refused before the proxy had
// any certificate: only a restart with a fresh token helps, so Run returns.
var ErrTokenSpent = errors.New("the control plane refused the bootstrap token")

// Control is the proxy's link to the control plane: it obtains and renews
// the proxy's certificate (CertificateService) and follows its config
// stream (ConfigService), reconnecting with jittered backoff whenever the
// control plane is away, and never dropping what it has: the last config
// and certificate stay in force indefinitely.
type Control struct {
	// Addr is the control plane's host:port (15012). Required.
	Addr string
	// ServerID is the identity the control plane must present. Required.
	ServerID identity.ID
	// BundleFile holds the roots (PEM) to trust the control plane by
	// until it sends a bundle. Required; waited for if missing.
	BundleFile string
	// Identity is the proxy's workload identity, which it asks a
	// certificate for. Required.
	Identity identity.ID
	// PodNamespace and PodName name the proxy's pod. Required.
	PodNamespace, PodName string
	// TokenFile holds the one-time bootstrap token for the first
	// certificate. Required.
	TokenFile string
	// Dial connects to the control plane (the proxy's marked dialer).
	// Default: net.Dialer.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Store receives the workload certificate and trust bundle. Required.
	Store *meshtls.Store
	// Apply installs a config; an error NACKs it and the previous config
	// stays. Called on Run's goroutine. Required.
	Apply func(*meshpb.ProxyConfig) error
	// Backoff bounds the reconnect delay: it starts at Backoff and doubles
	// up to MaxBackoff, each wait jittered. Defaults 200 ms and 5 s.
	Backoff, MaxBackoff time.Duration

	cpStore meshtls.Store // the link's own TLS material: current roots, and the SVID once there
	renew   chan struct{} // buffered(1): renew the certificate now
	// conn is the connection to the control plane that renewals and the
	// config stream share, so a renewal the stream asked for goes to the
	// replica that asked. Each renewal replaces it, ending the stream: the
	// next one proves the new certificate by its handshake.
	conn atomic.Pointer[grpc.ClientConn]

	mu         sync.Mutex
	bundle     []*x509.Certificate // guarded by mu
	bundleVer  string              // guarded by mu
	cert       *tls.Certificate    // guarded by mu
	renewAt    time.Time           // guarded by mu: when cert is due for renewal
	config     *meshpb.ProxyConfig // guarded by mu: the config in force
	renewAsked int64               // guarded by mu: last renew_issued_before acted on
}

// Run obtains a certificate, then keeps it renewed and the config stream
// followed, until ctx is done (then it returns nil) or the bootstrap token
// is refused before any certificate (ErrTokenSpent).
func (c *Control) Run(ctx context.Context) error {
	if c.Backoff <= 0 {
		c.Backoff = 200 * time.Millisecond
	}
	if c.MaxBackoff < c.Backoff {
		c.MaxBackoff = max(5*time.Second, c.Backoff)
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	c.renew = make(chan struct{}, 1)
	if err := c.loadBootstrapBundle(ctx); err != nil {
		return nil // ctx done
	}
	// The first request goes without a client certificate; everything
	// after it on a connection that presents one.
	boot, err := c.dial()
	if err != nil {
		return err
	}
	err = c.firstCertificate(ctx, meshpb.NewCertificateServiceClient(boot))
	boot.Close()
	if err != nil || ctx.Err() != nil {
		return err
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	c.conn.Store(conn)
	defer func() { c.conn.Load().Close() }()
	done := make(chan struct{})
	go func() { defer close(done); c.renewLoop(ctx) }()
	c.streamLoop(ctx)
	<-done
	return nil
}

func (c *Control) dial() (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(c.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(meshtls.ClientConfig(&c.cpStore, meshtls.Exactly(c.ServerID)))),
		grpc.WithContextDialer(c.Dial),
		// grpc-go would back off up to 2 minutes between connection
		// attempts; a proxy waiting for its first certificate must not.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: c.Backoff, Multiplier: 1.6, Jitter: 0.2,
			MaxDelay: c.MaxBackoff}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("control plane %s: %w", c.Addr, err)
	}
	return conn, nil
}

func (c *Control) loadBootstrapBundle(ctx context.Context) error {
	for wait := c.Backoff; ; wait = c.next(wait) {
		data, err := os.ReadFile(c.BundleFile)
		if err == nil {
			var roots []*x509.Certificate
			if roots, err = meshtls.ParseCerts(data); err == nil && len(roots) > 0 {
				c.setBundle(roots, "")
				return nil
			}
			if err == nil {
				err = errors.New("no certificate in it")
			}
		}
		slog.Warn("control plane trust bundle not readable yet; retrying", "file", c.BundleFile, "err", err, "in", wait)
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// firstCertificate trades the bootstrap token for a certificate, retrying
// while the control plane is unreachable. A refusal is retried for
// deniedGrace (the control plane may not have seen this pod's token yet),
// then ends it.
func (c *Control) firstCertificate(ctx context.Context, certs meshpb.CertificateServiceClient) error {
	var deniedSince time.Time
	for wait := c.Backoff; ; wait = c.next(wait) {
		token, err := os.ReadFile(c.TokenFile)
		if err == nil {
			err = c.sign(ctx, certs, strings.TrimSpace(string(token)))
			if err == nil {
				return nil
			}
			if status.Code(err) == codes.PermissionDenied {
				if deniedSince.IsZero() {
					deniedSince = time.Now()
				}
				if time.Since(deniedSince) > deniedGrace {
					return fmt.Errorf("%w: %v", ErrTokenSpent, err)
				}
			}
		}
		slog.Warn("no certificate yet; retrying", "err", err, "in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// renewLoop renews at half life, on the control plane's demand, and keeps
// retrying (the current certificate stays in use) while it is away. After
// each renewal the connection is replaced (see conn).
func (c *Control) renewLoop(ctx context.Context) {
	wait := c.Backoff
	for {
		c.mu.Lock()
		leaf, due := c.cert.Leaf, c.renewAt
		c.mu.Unlock()
		t := time.NewTimer(time.Until(due))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.renew:
			t.Stop()
		}
		for ctx.Err() == nil {
			err := c.sign(ctx, meshpb.NewCertificateServiceClient(c.conn.Load()), "")
			if err == nil {
				err = c.reconnect()
			}
			if err == nil {
				wait = c.Backoff
				break
			}
			slog.Warn("certificate renewal failed; keeping the current one", "err", err, "notAfter", leaf.NotAfter, "retryIn", wait)
			if !sleep(ctx, wait) {
				return
			}
			wait = c.next(wait)
		}
	}
}

// sign asks for a certificate with a fresh key, proving the identity by
// token (first) or by the current certificate (renewal).
func (c *Control) sign(ctx context.Context, certs meshpb.CertificateServiceClient, token string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{c.Identity.URL()}}, key)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := certs.Sign(rctx, &meshpb.SignRequest{Csr: csr, BootstrapToken: token, PodNamespace: c.PodNamespace, PodName: c.PodName})
	if err != nil {
		return err
	}
	cert := tls.Certificate{PrivateKey: key, Certificate: resp.GetChain()}
	if len(cert.Certificate) == 0 {
		return errors.New("the control plane sent an empty chain")
	}
	if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
		return fmt.Errorf("issued certificate: %w", err)
	}
	var roots []*x509.Certificate
	for _, der := range resp.GetTrustBundle() {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("trust bundle: %w", err)
		}
		roots = append(roots, r)
	}
	c.mu.Lock()
	// Half the lifetime left, counted from now: NotBefore is backdated
	// for clock skew, which would make short certificates due at once.
	now := time.Now()
	c.cert, c.renewAt = &cert, now.Add(cert.Leaf.NotAfter.Sub(now)/2)
	if len(roots) == 0 {
		roots = c.bundle
	}
	c.mu.Unlock()
	c.setBundle(roots, "")
	slog.Info("certificate issued", "identity", c.Identity, "notAfter", cert.Leaf.NotAfter)
	return nil
}

// reconnect replaces the connection with one made with the current
// certificate; the stream on the old one ends (errRenewed).
func (c *Control) reconnect() error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	c.conn.Swap(conn).Close()
	return nil
}

// setBundle installs roots (and the current certificate) in both stores;
// an empty version keeps the one known.
func (c *Control) setBundle(roots []*x509.Certificate, version string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bundle = roots
	if version != "" {
		c.bundleVer = version
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	m := meshtls.Material{ID: c.Identity, Roots: pool}
	if c.cert != nil {
		m.Cert = *c.cert
		c.Store.Set(m)
	}
	c.cpStore.Set(m)
}

// streamLoop follows the config stream, reconnecting with backoff, and at
// once when a renewal replaced the connection.
func (c *Control) streamLoop(ctx context.Context) {
	wait := c.Backoff
	for ctx.Err() == nil {
		applied, err := c.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRenewed) {
			wait = c.Backoff
			continue
		}
		if applied {
			wait = c.Backoff
		}
		slog.Warn("config stream ended; keeping the last config and reconnecting", "err", err, "in", wait)
		if !sleep(ctx, wait) {
			return
		}
		wait = c.next(wait)
	}
}

// errRenewed ends a stream whose connection a renewal replaced.
var errRenewed = errors.New("certificate renewed")

// follow runs one stream on the current connection; applied reports
// whether any update came.
func (c *Control) follow(ctx context.Context) (applied bool, err error) {
	conn := c.conn.Load()
	defer func() {
		if err != nil && c.conn.Load() != conn {
			err = errRenewed
		}
	}()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := meshpb.NewConfigServiceClient(conn).StreamConfig(sctx)
	if err != nil {
		return false, err
	}
	c.mu.Lock()
	hello := &meshpb.ConfigRequest{PodNamespace: c.PodNamespace, PodName: c.PodName, Version: c.config.GetVersion(), RouteChanges: true}
	c.mu.Unlock()
	if err := st.Send(c.report(hello)); err != nil {
		return false, err
	}
	for {
		upd, err := st.Recv()
		if err != nil {
			return applied, err
		}
		applied = true
		ans := &meshpb.ConfigRequest{ResponseNonce: upd.GetNonce()}
		if err := c.update(upd); err != nil {
			slog.Error("config update refused; keeping the previous config", "version", upd.GetVersion(), "err", err)
			ans.Error = err.Error()
		}
		c.mu.Lock()
		ans.Version = c.config.GetVersion()
		c.mu.Unlock()
		if err := st.Send(c.report(ans)); err != nil {
			return applied, err
		}
	}
}

// report fills in the bundle the proxy holds.
func (c *Control) report(req *meshpb.ConfigRequest) *meshpb.ConfigRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	req.TrustBundleVersion = c.bundleVer
	return req
}

// update merges upd into the config in force, validates and applies it.
func (c *Control) update(upd *meshpb.ConfigUpdate) error {
	c.mu.Lock()
	cur := c.config
	c.mu.Unlock()
	next, err := Merge(cur, upd)
	if err != nil {
		return err
	}
	if err := Validate(next); err != nil {
		return err
	}
	var roots []*x509.Certificate
	for _, der := range upd.GetTrustBundle() {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("trust_bundle: %w", err)
		}
		roots = append(roots, r)
	}
	if n := len(upd.GetRevokedPods()); n > MaxRevokedPods {
		return fmt.Errorf("revoked_pods lists %d pods, more than %d", n, MaxRevokedPods)
	}
	// An update of the trust bundle, deny list or renewal demand alone
	// leaves the config as it is: nothing to apply.
	same := !upd.GetFull() && cur != nil && upd.GetVersion() == cur.GetVersion() &&
		len(upd.GetUpsert())+len(upd.GetRemove())+len(upd.GetRouteUpsert())+len(upd.GetRouteRemove()) == 0
	if !same {
		if err := c.Apply(next); err != nil {
			return err
		}
	}
	if len(roots) > 0 {
		c.setBundle(roots, upd.GetTrustBundleVersion())
	}
	if upd.GetRevokedVersion() != "" {
		c.Store.SetRevoked(upd.GetRevokedPods())
	}
	c.mu.Lock()
	c.config = next
	renew := false
	if rb := upd.GetRenewIssuedBefore(); rb > c.renewAsked {
		c.renewAsked = rb
		// NotBefore is backdated a minute for clock skew.
		renew = c.cert.Leaf.NotBefore.Add(time.Minute).Unix() < rb
	}
	c.mu.Unlock()
	if renew {
		select {
		case c.renew <- struct{}{}:
		default:
		}
	}
	return nil
}

// Merge applies an update to cur (nil before the first), returning a new
// config that shares the unchanged services' and routes' messages with
// cur and the new ones with upd; neither is modified. Services stay sorted
// by namespace/name, routes as meshpb.CompareRoutes orders them.
func Merge(cur *meshpb.ProxyConfig, upd *meshpb.ConfigUpdate) (*meshpb.ProxyConfig, error) {
	if cur == nil && !upd.GetFull() {
		return nil, errors.New("an incremental update arrived before any full config")
	}
	if upd.GetVersion() == "" {
		return nil, errors.New("version is required")
	}
	routes, err := mergeRoutes(cur, upd)
	if err != nil {
		return nil, err
	}
	svcs := map[string]*meshpb.Service{}
	if !upd.GetFull() {
		for _, s := range cur.GetServices() {
			svcs[s.GetNamespace()+"/"+s.GetName()] = s
		}
	}
	for _, k := range upd.GetRemove() {
		delete(svcs, k)
	}
	for _, s := range upd.GetUpsert() {
		svcs[s.GetNamespace()+"/"+s.GetName()] = s
	}
	next := &meshpb.ProxyConfig{Version: upd.GetVersion(), Workload: upd.GetWorkload(), Inbound: upd.GetInbound(),
		Authorization: upd.GetAuthorization(), Authentication: upd.GetAuthentication(), Routes: routes}
	for _, s := range svcs {
		next.Services = append(next.Services, s)
	}
	sort.Slice(next.Services, func(i, j int) bool {
		a, b := next.Services[i], next.Services[j]
		return a.GetNamespace()+"/"+a.GetName() < b.GetNamespace()+"/"+b.GetName()
	})
	return next, nil
}

// mergeRoutes is the routes upd leaves in force: its routes when it
// carries them complete, else cur's changed by its route_remove and
// route_upsert.
func mergeRoutes(cur *meshpb.ProxyConfig, upd *meshpb.ConfigUpdate) ([]*meshpb.Route, error) {
	if !upd.GetRoutesIncremental() {
		if len(upd.GetRouteUpsert())+len(upd.GetRouteRemove()) > 0 {
			return nil, errors.New("route_upsert and route_remove need routes_incremental")
		}
		return upd.GetRoutes(), nil
	}
	if upd.GetFull() || len(upd.GetRoutes()) > 0 {
		return nil, errors.New("routes_incremental: a full update, or one with routes, carries its routes complete")
	}
	byKey := map[string]*meshpb.Route{}
	for _, r := range cur.GetRoutes() {
		byKey[r.Key()] = r
	}
	for _, k := range upd.GetRouteRemove() {
		delete(byKey, k)
	}
	for _, r := range upd.GetRouteUpsert() {
		byKey[r.Key()] = r
	}
	return slices.SortedFunc(maps.Values(byKey), meshpb.CompareRoutes), nil
}

func (c *Control) next(wait time.Duration) time.Duration { return min(2*wait, c.MaxBackoff) }

// sleep waits d, jittered to between half and all of it; false when ctx
// ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	d = d/2 + mrand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
