package controlplane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/controlclient"
	"github.com/trellis-mesh/trellis/internal/discovery"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/push"
)

// A real control plane on loopback, fed by a registry file the test
// writes, as the one-host runtime does.
type rig struct {
	t             *testing.T
	caCert, caKey string // an operator's CA files, when set before start
	dir           string
	addr          string
	cancel        context.CancelFunc
	done          chan error
	snap          *catalog.Snapshot
	tokens        map[string]string // pod key -> token
	registry      string
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

// newRigWith lets setup change the rig (its CA files) before it starts.
func newRigWith(t *testing.T, setup func(*rig)) *rig {
	r := &rig{t: t, dir: t.TempDir(), addr: freeAddr(t), tokens: map[string]string{}}
	if setup != nil {
		setup(r)
	}
	r.registry = filepath.Join(r.dir, "registry.json")
	r.snap = &catalog.Snapshot{
		Namespaces: []*catalog.Namespace{{Meta: catalog.Meta{Name: "web"}}},
		Services: []*catalog.Service{{Meta: catalog.Meta{Namespace: "web", Name: "hello"}, Selector: map[string]string{"app": "hello"},
			ClusterIP: netip.MustParseAddr("10.201.0.1"), Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 8080, TargetPort: 8080}}}},
	}
	for i, name := range []string{"a", "b"} {
		r.addPod(name, netip.AddrFrom4([4]byte{10, 200, 0, byte(2 + i)}))
	}
	r.write()
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *rig) addPod(name string, ip netip.Addr) {
	tok := name + "-secret-token"
	sum := sha256.Sum256([]byte(tok))
	r.tokens["web/"+name] = tok
	r.snap.Pods = append(r.snap.Pods, &catalog.RunningPod{UID: "uid-" + name,
		Pod: &catalog.Pod{Meta: catalog.Meta{Namespace: "web", Name: name, Labels: map[string]string{"app": "hello"}},
			Spec: catalog.PodSpec{ServiceAccount: "hello"}},
		IP: ip, Ready: true, Sidecar: true, BootstrapTokenSHA256: hex.EncodeToString(sum[:]),
	})
}

func (r *rig) write() {
	r.snap.Version++
	if err := discovery.WriteFile(r.registry, r.snap); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	cfg := Config{StateDir: filepath.Join(r.dir, "control"), Registry: r.registry, GRPCAddr: r.addr,
		MetricsAddr: "127.0.0.1:0", NoDashboard: true, SVIDTTL: time.Hour, Debounce: 20 * time.Millisecond, CACert: r.caCert, CAKey: r.caKey}
	go func() { r.done <- Run(ctx, cfg) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatal("control plane did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	if err := <-r.done; err != nil {
		r.t.Errorf("Run returned %v", err)
	}
	r.cancel = nil
}

func (r *rig) bundle() []byte {
	data, err := os.ReadFile(filepath.Join(r.dir, "control", "ca", "trust-bundle.pem"))
	if err != nil {
		r.t.Fatal(err)
	}
	return data
}

// client dials the control plane, verifying its identity, presenting cert
// when not nil.
func (r *rig) client(cert *tls.Certificate) *grpc.ClientConn {
	r.t.Helper()
	return r.clientTrusting(r.bundle(), cert)
}

// clientTrusting is client with the roots of bundle (PEM).
func (r *rig) clientTrusting(bundle []byte, cert *tls.Certificate) *grpc.ClientConn {
	r.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	var store meshtls.Store
	m := meshtls.Material{Roots: pool}
	if cert != nil {
		m.Cert = *cert
	}
	store.Set(m)
	id, _ := ServerID("cluster.local")
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(meshtls.ClientConfig(&store, meshtls.Exactly(id)))))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return conn
}

func csrFor(t *testing.T, id string, key any) []byte {
	t.Helper()
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const helloID = "spiffe://cluster.local/ns/web/sa/hello"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSignRefusesWhatIsNotProven(t *testing.T) {
	r := newRig(t)
	certs := meshpb.NewCertificateServiceClient(r.client(nil))
	ctx := ctxT(t)
	key := p256(t)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	sign := func(req *meshpb.SignRequest) error {
		_, err := certs.Sign(ctx, req)
		return err
	}
	// The first good request spends a's token.
	if err := sign(&meshpb.SignRequest{Csr: csrFor(t, helloID, key), BootstrapToken: r.tokens["web/a"], PodNamespace: "web", PodName: "a"}); err != nil {
		t.Fatalf("a's first certificate: %v", err)
	}
	for _, tc := range []struct {
		name string
		req  *meshpb.SignRequest
		code codes.Code
		msg  string
	}{
		{"no token, no client certificate", &meshpb.SignRequest{Csr: csrFor(t, helloID, key)}, codes.PermissionDenied, "no bootstrap token"},
		{"another pod's token", &meshpb.SignRequest{Csr: csrFor(t, helloID, key), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "a"}, codes.PermissionDenied, "not given to pod web/a"},
		{"a replayed token from another key", &meshpb.SignRequest{Csr: csrFor(t, helloID, p256(t)), BootstrapToken: r.tokens["web/a"], PodNamespace: "web", PodName: "a"}, codes.PermissionDenied, "used already"},
		{"an unknown pod", &meshpb.SignRequest{Csr: csrFor(t, helloID, key), BootstrapToken: "x", PodNamespace: "web", PodName: "nope"}, codes.PermissionDenied, "no pod web/nope"},
		{"a token for another identity", &meshpb.SignRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/web/sa/admin", p256(t)), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}, codes.PermissionDenied, "not as the spiffe://cluster.local/ns/web/sa/admin"},
		{"the control plane's own identity", &meshpb.SignRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/trellis-system/sa/trellis-control", p256(t)), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}, codes.PermissionDenied, "reserved for Trellis"},
		{"garbage CSR", &meshpb.SignRequest{Csr: []byte("not a csr"), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}, codes.InvalidArgument, "not a PKCS#10"},
		{"empty CSR", &meshpb.SignRequest{}, codes.InvalidArgument, "empty"},
		{"RSA key", &meshpb.SignRequest{Csr: csrFor(t, helloID, rsaKey), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}, codes.InvalidArgument, "P-256"},
		{"P-384 key", &meshpb.SignRequest{Csr: csrFor(t, helloID, p384), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}, codes.InvalidArgument, "P-256"},
		{"oversized CSR", &meshpb.SignRequest{Csr: make([]byte, 9<<10)}, codes.InvalidArgument, "more than"},
		{"huge message", &meshpb.SignRequest{Csr: make([]byte, 1<<20)}, codes.ResourceExhausted, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sign(tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Sign = %v, want %v containing %q", err, tc.code, tc.msg)
			}
		})
	}
	// b's token was never spent by the refused requests above.
	if err := sign(&meshpb.SignRequest{Csr: csrFor(t, helloID, p256(t)), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"}); err != nil {
		t.Errorf("b's first certificate after the refusals: %v", err)
	}
}

// A flood of streams without certificates is refused one by one, and the
// control plane keeps serving.
func TestStreamFloodIsRefused(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	cfgs := meshpb.NewConfigServiceClient(r.client(nil))
	var wg sync.WaitGroup
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	for range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := cfgs.StreamConfig(ctx)
			if err == nil {
				_ = st.Send(&meshpb.ConfigRequest{PodNamespace: "web", PodName: "a"})
				_, err = st.Recv()
			}
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codesSeen[codes.Unauthenticated] != 300 {
		t.Errorf("300 streams without a certificate ended with %v, want 300 Unauthenticated", codesSeen)
	}
	// A real proxy still gets its config.
	got := runProxy(t, r, "a")
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return len(c.GetServices()) == 1 })
}

// runProxy runs the proxy side (controlclient.Control) for pod name.
func runProxy(t *testing.T, r *rig, name string) *configs { return runProxyRefusing(t, r, name, nil) }

// runProxyRefusing is runProxy with a proxy that refuses (NACKs) the
// configs refuse says no to.
func runProxyRefusing(t *testing.T, r *rig, name string, refuse func(*meshpb.ProxyConfig) error) *configs {
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(r.tokens["web/"+name]), 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, r.bundle(), 0o600); err != nil {
		t.Fatal(err)
	}
	id, _ := identity.Parse(helloID)
	sid, _ := ServerID("cluster.local")
	got := &configs{store: &meshtls.Store{}, refuse: refuse}
	ctl := &controlclient.Control{Addr: r.addr, ServerID: sid, BundleFile: bundle, Identity: id, PodNamespace: "web", PodName: name,
		TokenFile: tokFile, Store: got.store, Apply: got.apply, Backoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Control.Run = %v", err)
		}
	})
	return got
}

type configs struct {
	store  *meshtls.Store
	refuse func(*meshpb.ProxyConfig) error
	mu     sync.Mutex
	last   *meshpb.ProxyConfig
	n      int
}

func (c *configs) apply(cfg *meshpb.ProxyConfig) error {
	if c.refuse != nil {
		if err := c.refuse(cfg); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last, c.n = cfg, c.n+1
	return nil
}

// count is how many configs were applied.
func (c *configs) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *configs) current() *meshpb.ProxyConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func waitConfig(t *testing.T, c *configs, ok func(*meshpb.ProxyConfig) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cfg := c.current(); cfg != nil && ok(cfg) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for a config; last: %v", c.current())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func endpoints(c *meshpb.ProxyConfig) int {
	n := 0
	for _, s := range c.GetServices() {
		for _, p := range s.GetPorts() {
			n += len(p.GetEndpoints())
		}
	}
	return n
}

// The control plane goes away and comes back: the proxy keeps its config
// and certificate meanwhile, reconnects, and learns what changed. The root
// is the same after the restart, so the certificate issued before still
// verifies.
func TestRestartKeepsRootAndProxiesResync(t *testing.T) {
	r := newRig(t)
	got := runProxy(t, r, "a")
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })
	cert := got.store.Current().Cert.Leaf
	rootBefore := string(r.bundle())

	r.stop()
	r.addPod("c", netip.MustParseAddr("10.200.0.9"))
	r.write()
	time.Sleep(300 * time.Millisecond)
	if endpoints(got.current()) != 2 || got.store.Current() == nil {
		t.Fatal("the proxy lost its config or certificate while the control plane was away")
	}
	r.start()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 3 })
	if string(r.bundle()) != rootBefore {
		t.Error("the restarted control plane has another root")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.bundle())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("a certificate issued before the restart does not verify after it: %v", err)
	}
	if info, err := os.Stat(filepath.Join(r.dir, "control", "ca", "ca-key.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("CA key file: %v, mode %v; want 0600", err, info.Mode().Perm())
	}
}

// A NACKed config leaves the proxy on its previous one, is shown with its
// reason, and is not sent again; the next change is.
func TestNACKKeepsThePreviousConfig(t *testing.T) {
	r := newRig(t)
	got := runProxyRefusing(t, r, "a", func(c *meshpb.ProxyConfig) error {
		if endpoints(c) == 3 {
			return errors.New("three endpoints are one too many")
		}
		return nil
	})
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })
	r.addPod("c", netip.MustParseAddr("10.200.0.9"))
	r.write()
	nack := waitStatus(t, r, func(p push.ProxyStatus) bool { return p.Pod == "a" && p.NACK != "" })
	if !strings.Contains(nack.NACK, "one too many") {
		t.Errorf("proxy-status NACK = %q, want the proxy's reason", nack.NACK)
	}
	if endpoints(got.current()) != 2 {
		t.Errorf("after the NACK the proxy runs %d endpoints, want its previous 2", endpoints(got.current()))
	}
	applied := got.count()
	time.Sleep(300 * time.Millisecond)
	if got.count() != applied {
		t.Error("the refused config was sent again without a change")
	}
	// c leaves, d joins and a turns unready: two endpoints again (b, d),
	// a config the proxy accepts.
	r.snap.Pods = r.snap.Pods[:len(r.snap.Pods)-1]
	r.addPod("d", netip.MustParseAddr("10.200.0.10"))
	r.snap.Pods[0].Ready = false
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool {
		for _, s := range c.GetServices() {
			for _, p := range s.GetPorts() {
				for _, e := range p.GetEndpoints() {
					if e.GetAddress() == "10.200.0.10" {
						return true
					}
				}
			}
		}
		return false
	})
	waitStatus(t, r, func(p push.ProxyStatus) bool { return p.Pod == "a" && p.NACK == "" && p.AckedVersion == p.WantVersion })
}

// waitStatus polls the admin socket's proxy list until one matches.
func waitStatus(t *testing.T, r *rig, ok func(push.ProxyStatus) bool) push.ProxyStatus {
	t.Helper()
	admin, ctx := NewClient(filepath.Join(r.dir, "control")), ctxT(t)
	deadline := time.Now().Add(10 * time.Second)
	var last []push.ProxyStatus
	for time.Now().Before(deadline) {
		last, _ = admin.Proxies(ctx)
		for _, p := range last {
			if ok(p) {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for a proxy status; last: %+v", last)
	return push.ProxyStatus{}
}

// A proxy that stops answering holds one update, never a queue: the
// others keep converging, and when it answers it gets one update with the
// latest state, all changes coalesced.
func TestSlowProxyIsCoalesced(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	key := p256(t)
	resp, err := meshpb.NewCertificateServiceClient(r.client(nil)).Sign(ctx, &meshpb.SignRequest{
		Csr: csrFor(t, helloID, key), BootstrapToken: r.tokens["web/b"], PodNamespace: "web", PodName: "b"})
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: resp.GetChain(), PrivateKey: key}
	slow, err := meshpb.NewConfigServiceClient(r.client(cert)).StreamConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Send(&meshpb.ConfigRequest{PodNamespace: "web", PodName: "b"}); err != nil {
		t.Fatal(err)
	}
	first, err := slow.Recv()
	if err != nil || !first.GetFull() {
		t.Fatalf("first update = %v, %v; want a full one", first, err)
	}
	fast := runProxy(t, r, "a")
	waitConfig(t, fast, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })
	// 20 changes, each its own push (longer apart than the debounce); the
	// slow proxy answers none of them.
	for i := range 20 {
		r.addPod(fmt.Sprintf("n%d", i), netip.AddrFrom4([4]byte{10, 200, 1, byte(i + 1)}))
		r.write()
		time.Sleep(60 * time.Millisecond)
	}
	waitConfig(t, fast, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 22 })
	// Now the slow proxy ACKs its first update: the next is the latest
	// state in one incremental update.
	if err := slow.Send(&meshpb.ConfigRequest{ResponseNonce: first.GetNonce(), Version: first.GetVersion()}); err != nil {
		t.Fatal(err)
	}
	next, err := slow.Recv()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range next.GetUpsert() {
		for _, p := range s.GetPorts() {
			n += len(p.GetEndpoints())
		}
	}
	if next.GetFull() || n != 22 {
		t.Errorf("after the ACK the slow proxy got full=%v with %d endpoints; want one incremental update with all 22", next.GetFull(), n)
	}
}

// An operator's intermediate signs: issued chains carry it, and the trust
// bundle holds only the operator's root.
func TestOperatorIntermediateSigns(t *testing.T) {
	rootKey, interKey := p256(t), p256(t)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "operator intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	r := newRigWith(t, func(r *rig) {
		r.caCert, r.caKey = filepath.Join(r.dir, "ca.pem"), filepath.Join(r.dir, "ca-key.pem")
		chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})...)
		if err := os.WriteFile(r.caCert, chain, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(r.caKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if b, _ := pem.Decode(r.bundle()); b == nil || !bytes.Equal(b.Bytes, rootDER) {
		t.Fatal("the trust bundle does not hold the operator's root")
	}
	resp, err := meshpb.NewCertificateServiceClient(r.client(nil)).Sign(ctxT(t), &meshpb.SignRequest{
		Csr: csrFor(t, helloID, p256(t)), BootstrapToken: r.tokens["web/a"], PodNamespace: "web", PodName: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetChain()) != 2 || !bytes.Equal(resp.GetChain()[1], interDER) {
		t.Fatalf("issued chain has %d certificates; want the leaf and the operator's intermediate", len(resp.GetChain()))
	}
	leaf, _ := x509.ParseCertificate(resp.GetChain()[0])
	inter := x509.NewCertPool()
	inter.AddCert(mustParse(t, interDER))
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the leaf does not verify up to the operator's root: %v", err)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRenewalOnlyWhileTheIdentityRuns: a certificate proves who its holder
// was; once no meshed pod runs as that identity (the pod deleted, its key
// perhaps taken), it is not renewed.
func TestRenewalOnlyWhileTheIdentityRuns(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	cert := r.firstCert(t, "a")
	renew := func() error {
		_, err := meshpb.NewCertificateServiceClient(r.client(&cert)).Sign(ctx, &meshpb.SignRequest{Csr: csrFor(t, helloID, p256(t))})
		return err
	}
	if err := renew(); err != nil {
		t.Fatalf("renewal while the pods run: %v", err)
	}
	// Both pods of the identity are deleted while the control plane is
	// away, so it has no deny-list entry for them (that path is
	// TestDeletedPodsCertificateIsRefused): the renewal check alone
	// refuses.
	r.stop()
	r.snap.Pods = nil
	r.write()
	r.start()
	var err2 error
	for range 100 {
		if err2 = renew(); err2 != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status.Code(err2) != codes.PermissionDenied || !strings.Contains(err2.Error(), "any more") {
		t.Errorf("renewal after the pods were deleted: %v, want PermissionDenied saying nothing runs as it any more", err2)
	}
}

// firstCert gets pod name its first certificate with its token.
func (r *rig) firstCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key := p256(t)
	resp, err := meshpb.NewCertificateServiceClient(r.client(nil)).Sign(ctxT(t),
		&meshpb.SignRequest{Csr: csrFor(t, helloID, key), BootstrapToken: r.tokens["web/"+name], PodNamespace: "web", PodName: name})
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{PrivateKey: key, Certificate: resp.GetChain()}
}

// TestStreamsPerPodAreCapped: a holder of a pod's certificate cannot open
// config streams without end; the fifth at once is refused.
func TestStreamsPerPodAreCapped(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	cert := r.firstCert(t, "a")
	conn := r.client(&cert)
	open := func() error {
		st, err := meshpb.NewConfigServiceClient(conn).StreamConfig(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&meshpb.ConfigRequest{PodNamespace: "web", PodName: "a"}); err != nil {
			return err
		}
		_, err = st.Recv() // the config, or the refusal
		return err
	}
	for i := range push.MaxStreamsPerPod {
		if err := open(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	if err := open(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream %d of one pod: %v, want ResourceExhausted", push.MaxStreamsPerPod+1, err)
	}
}

// TestProxyStatusIsWhatTheHandshakeProved: the certificate proxy-status
// and root rotation see is the one the proxy's newest stream was opened
// with, not anything the proxy says of itself.
func TestProxyStatusIsWhatTheHandshakeProved(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	admin := NewClient(filepath.Join(r.dir, "control"))
	stream := func(cert tls.Certificate) {
		t.Helper()
		st, err := meshpb.NewConfigServiceClient(r.client(&cert)).StreamConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&meshpb.ConfigRequest{PodNamespace: "web", PodName: "a"}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	status := func() push.ProxyStatus {
		t.Helper()
		ps, err := admin.Proxies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Pod == "a" {
				return p
			}
		}
		t.Fatalf("pod a is not in proxy-status: %+v", ps)
		return push.ProxyStatus{}
	}
	root, _ := pem.Decode(r.bundle()) // the only root before the rotation
	firstRoot := sha256.Sum256(root.Bytes)

	old := r.firstCert(t, "a")
	stream(old)
	if got, want := status().CertIssuer, hex.EncodeToString(firstRoot[:]); got != want {
		t.Fatalf("issuer = %q, want the first root %q", got, want)
	}
	for _, step := range []string{"prepare", "activate"} {
		if _, err := admin.Rotate(ctx, step); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := admin.CA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status().CertIssuer == ca.Signer {
		t.Fatal("the proxy counts as renewed before it showed a new certificate")
	}
	key := p256(t)
	resp, err := meshpb.NewCertificateServiceClient(r.client(&old)).Sign(ctx, &meshpb.SignRequest{Csr: csrFor(t, helloID, key)})
	if err != nil {
		t.Fatal(err)
	}
	renewed := tls.Certificate{PrivateKey: key, Certificate: resp.GetChain()}
	stream(renewed) // the old stream stays open: the newest one counts
	got := status()
	if got.CertIssuer != ca.Signer {
		t.Errorf("issuer after a stream with the renewed certificate = %q, want the new signer %q", got.CertIssuer, ca.Signer)
	}
	if want := mustParse(t, renewed.Certificate[0]).NotAfter; !got.CertNotAfter.Equal(want) {
		t.Errorf("notAfter = %v, want the renewed certificate's %v", got.CertNotAfter, want)
	}
}

// TestPodInjectedBeforeARotationStartsAfterIt: a sidecar that trusts only
// the old root (injected before the rotation began) gets its first
// certificate from a control plane whose new root is already signing, and
// the new bundle with it.
func TestPodInjectedBeforeARotationStartsAfterIt(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	admin := NewClient(filepath.Join(r.dir, "control"))
	oldBundle := r.bundle()
	for _, step := range []string{"prepare", "activate"} {
		if _, err := admin.Rotate(ctx, step); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := meshpb.NewCertificateServiceClient(r.clientTrusting(oldBundle, nil)).Sign(ctx,
		&meshpb.SignRequest{Csr: csrFor(t, helloID, p256(t)), BootstrapToken: r.tokens["web/a"], PodNamespace: "web", PodName: "a"})
	if err != nil {
		t.Fatalf("first certificate with only the old root trusted: %v", err)
	}
	if len(resp.GetTrustBundle()) != 2 {
		t.Errorf("the answer carries %d roots, want both of the rotation", len(resp.GetTrustBundle()))
	}
}

// TestDeletedPodsCertificateIsRefused: once a pod is deleted, the
// certificate (and key) it held is refused by another pod's proxy within
// one push, and by the control plane, long before it expires.
func TestDeletedPodsCertificateIsRefused(t *testing.T) {
	r := newRig(t)
	b := runProxy(t, r, "b")
	waitConfig(t, b, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })

	// b's inbound: a real TLS listener with the proxy's server config and
	// b's store, which the control plane feeds.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", meshtls.ServerConfig(b.store, meshtls.MemberOf("cluster.local")))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	refusals := make(chan error, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if err := c.(*tls.Conn).Handshake(); err != nil {
				refusals <- err
			} else {
				c.Write([]byte("ok"))
			}
			c.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.bundle())
	connect := func(cert tls.Certificate) error {
		var store meshtls.Store
		store.Set(meshtls.Material{Cert: cert, Roots: pool})
		c, err := tls.Dial("tcp", ln.Addr().String(), meshtls.ClientConfig(&store, meshtls.MemberOf("cluster.local")))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2)
		_, err = io.ReadFull(c, buf) // TLS 1.3: the server's verdict on our certificate comes with the first read
		return err
	}

	stolen := r.firstCert(t, "a")
	if err := connect(stolen); err != nil {
		t.Fatalf("a's certificate while a runs: %v", err)
	}
	r.snap.Pods = slices.DeleteFunc(r.snap.Pods, func(p *catalog.RunningPod) bool { return p.Pod.Name == "a" })
	r.write()
	deadline := time.Now().Add(10 * time.Second)
	for connect(stolen) == nil {
		if time.Now().After(deadline) {
			t.Fatal("b still accepts the deleted pod a's certificate 10 s after the deletion")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-refusals; !errors.Is(err, meshtls.ErrRevoked) {
		t.Errorf("b refused a's certificate with %v, want ErrRevoked", err)
	}
	if err := connect(b.store.Current().Cert); err != nil {
		t.Errorf("b's own certificate (its pod runs) is refused too: %v", err)
	}
	_, err = meshpb.NewCertificateServiceClient(r.client(&stolen)).Sign(ctxT(t), &meshpb.SignRequest{Csr: csrFor(t, helloID, p256(t))})
	if err == nil {
		t.Error("the control plane renewed the deleted pod's certificate")
	}
	t.Logf("the control plane refused the renewal: %v", err)
}

// A proxy that says it takes route changes gets, after its full config,
// only the routes that changed and the keys of those gone; one that does
// not gets its routes complete in every update. Both end up holding the
// same routes (controlclient.Merge, as the proxy applies updates).
func TestRouteChangesAreSentAlone(t *testing.T) {
	r := newRig(t)
	core := ""
	route := func(name string, weight int32) *catalog.HTTPRoute {
		return &catalog.HTTPRoute{Meta: catalog.Meta{Namespace: "web", Name: name}, Spec: catalog.HTTPRouteSpec{
			ParentRefs: []catalog.ParentReference{{Group: &core, Kind: "Service", Name: "hello"}},
			Rules: []catalog.HTTPRouteRule{{BackendRefs: []catalog.HTTPBackendRef{{BackendRef: catalog.BackendRef{
				BackendObjectReference: catalog.BackendObjectReference{Name: "hello", Port: 8080}, Weight: &weight}}}}}}}
	}
	// proxy is one raw config stream and the config its updates add up to.
	type proxy struct {
		st   meshpb.ConfigService_StreamConfigClient
		held *meshpb.ProxyConfig
		last *meshpb.ConfigUpdate // not ACKed yet
	}
	open := func(pod string, routeChanges bool) *proxy {
		cert := r.firstCert(t, pod)
		st, err := meshpb.NewConfigServiceClient(r.client(&cert)).StreamConfig(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&meshpb.ConfigRequest{PodNamespace: "web", PodName: pod, RouteChanges: routeChanges}); err != nil {
			t.Fatal(err)
		}
		return &proxy{st: st}
	}
	// next ACKs the last update and waits for updates, each merged into
	// what p holds, until p holds routes named want; it returns the last.
	next := func(p *proxy, want ...string) *meshpb.ConfigUpdate {
		t.Helper()
		for {
			if p.last != nil {
				if err := p.st.Send(&meshpb.ConfigRequest{ResponseNonce: p.last.GetNonce(), Version: p.last.GetVersion()}); err != nil {
					t.Fatal(err)
				}
			}
			upd, err := p.st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if p.held, err = controlclient.Merge(p.held, upd); err != nil {
				t.Fatal(err)
			}
			p.last = upd
			if slices.Equal(keys(p.held.GetRoutes()), want) {
				return upd
			}
		}
	}
	changes, complete := open("a", true), open("b", false)
	next(changes)
	next(complete)

	r.snap.HTTPRoutes = []*catalog.HTTPRoute{route("split", 1), route("stays", 1)}
	r.write()
	both := []string{"HTTPRoute/web/split", "HTTPRoute/web/stays"}
	a, b := next(changes, both...), next(complete, both...)
	if !a.GetRoutesIncremental() || len(a.GetRoutes()) != 0 || !slices.Equal(keys(a.GetRouteUpsert()), both) {
		t.Errorf("two routes added: incremental=%v routes=%v upsert=%v; want both upserted", a.GetRoutesIncremental(), keys(a.GetRoutes()), keys(a.GetRouteUpsert()))
	}
	if b.GetRoutesIncremental() || len(b.GetRouteUpsert()) != 0 {
		t.Errorf("to a proxy that takes no route changes: incremental=%v upsert=%v, want the routes complete", b.GetRoutesIncremental(), keys(b.GetRouteUpsert()))
	}

	// One route changes (its weight), the other stays.
	r.snap.HTTPRoutes[0] = route("split", 3)
	r.write()
	a = next(changes, both...)
	for a.GetRoutesIncremental() && len(a.GetRouteUpsert()) == 0 { // an update before the change
		a = next(changes, both...)
	}
	if len(a.GetRoutes()) != 0 || !slices.Equal(keys(a.GetRouteUpsert()), []string{"HTTPRoute/web/split"}) || len(a.GetRouteRemove()) != 0 {
		t.Errorf("after one route changed: routes=%v upsert=%v remove=%v; want only HTTPRoute/web/split upserted",
			keys(a.GetRoutes()), keys(a.GetRouteUpsert()), a.GetRouteRemove())
	}
	if w := firstWeight(changes.held.GetRoutes()[0]); w != 3 {
		t.Errorf("the proxy holds split with weight %v, want the changed 3", w)
	}

	// One goes.
	r.snap.HTTPRoutes = r.snap.HTTPRoutes[:1]
	r.write()
	a, b = next(changes, "HTTPRoute/web/split"), next(complete, "HTTPRoute/web/split")
	if !slices.Equal(a.GetRouteRemove(), []string{"HTTPRoute/web/stays"}) || len(a.GetRouteUpsert()) != 0 {
		t.Errorf("after a route went: upsert=%v remove=%v, want HTTPRoute/web/stays removed only", keys(a.GetRouteUpsert()), a.GetRouteRemove())
	}
	if b.GetRoutesIncremental() || len(b.GetRoutes()) != 1 {
		t.Errorf("to a proxy that takes no route changes: incremental=%v routes=%v, want the one left, complete", b.GetRoutesIncremental(), keys(b.GetRoutes()))
	}
}

// keys are routes' keys, in order.
func keys(rs []*meshpb.Route) []string {
	var out []string
	for _, rt := range rs {
		out = append(out, rt.Key())
	}
	return out
}

// firstWeight is the weight of a route's first backend, as sent; 0 when
// it has none.
func firstWeight(rt *meshpb.Route) float64 {
	rules := rt.GetSpec().GetFields()["rules"].GetListValue().GetValues()
	if len(rules) == 0 {
		return 0
	}
	refs := rules[0].GetStructValue().GetFields()["backendRefs"].GetListValue().GetValues()
	if len(refs) == 0 {
		return 0
	}
	return refs[0].GetStructValue().GetFields()["weight"].GetNumberValue()
}
