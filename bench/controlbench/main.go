// Command controlbench measures the control plane's push: N simulated
// proxies (real gRPC streams with real certificates, in this process)
// against one `trellis control` process; one endpoint flips (or, with
// -change policy, an AuthorizationPolicy covering every proxy changes,
// which each simulated proxy compiles, as a real one does, before it
// ACKs: the ACK is the moment the policy is enforced) and each proxy's
// time from the registry change to its ACK is recorded, with the control
// plane's RSS per connected proxy. Run by bench/run-control.sh.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/discovery"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
)

func main() {
	trellis := flag.String("trellis", "bin/trellis", "the trellis binary")
	sizes := flag.String("proxies", "100,1000,5000", "proxy counts to measure")
	flips := flag.Int("flips", 5, "changes per size")
	change := flag.String("change", "endpoint", "what changes: endpoint (one endpoint flips) or policy (an AuthorizationPolicy over every proxy)")
	flag.Parse()
	if *change != "endpoint" && *change != "policy" {
		fail(fmt.Errorf("-change %q: use endpoint or policy", *change))
	}
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	fmt.Println("| proxies | p50 change→ACK (ms) | p99 change→ACK (ms) | max (ms) | control-plane RSS (MiB) | RSS per proxy (KiB) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			fail(err)
		}
		if err := measure(*trellis, n, *flips, *change == "policy"); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "controlbench:", err)
	os.Exit(1)
}

type sim struct {
	dir, registry, addr string
	snap                *catalog.Snapshot
	tokens              []string
}

func measure(trellis string, n, flips int, policy bool) error {
	dir, err := os.MkdirTemp("", "controlbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &sim{dir: dir, registry: filepath.Join(dir, "registry.json"), addr: freeAddr()}
	s.build(n)
	if err := discovery.WriteFile(s.registry, s.snap); err != nil {
		return err
	}
	cp := exec.Command(trellis, "control", "--control-state-dir", filepath.Join(dir, "control"), "--registry", s.registry,
		"--grpc-addr", s.addr, "--metrics-addr", "127.0.0.1:0",
		"--max-conns-per-source", "-1", // every simulated proxy dials from 127.0.0.1
		"--no-dashboard") // its pods are made up: nothing to scrape
	cp.Stderr = nil
	if err := cp.Start(); err != nil {
		return err
	}
	defer func() { cp.Process.Signal(syscall.SIGTERM); cp.Wait() }()
	if err := waitListen(s.addr); err != nil {
		return err
	}
	base := rssKiB(cp.Process.Pid)
	acks := make(chan time.Time, n*4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	ready := make(chan error, n)
	setup := make(chan struct{}, 32) // connect in waves, as a rollout would
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); s.proxy(ctx, i, setup, ready, acks) }()
	}
	for range n {
		if err := <-ready; err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	time.Sleep(2 * time.Second) // first pushes settle
	drain(acks)
	rss := rssKiB(cp.Process.Pid)
	var lat []time.Duration
	for f := range flips {
		if policy { // what the namespace's DENY policy names changes each time
			s.snap.AuthorizationPolicies = []*catalog.AuthorizationPolicy{{Meta: catalog.Meta{Namespace: "sim", Name: "deny"},
				Spec: catalog.AuthorizationSpec{Action: catalog.AuthorizationDeny, Rules: []catalog.AuthorizationRule{{
					To: []catalog.AuthorizationTo{{Operation: catalog.AuthorizationOperation{Paths: []string{fmt.Sprintf("/admin/%d/*", f)}}}}}}}}}
		} else {
			s.snap.Pods[0].Ready = f%2 == 0 // the one endpoint flips: in, out, in, ...
		}
		s.snap.Version++
		start := time.Now()
		if err := discovery.WriteFile(s.registry, s.snap); err != nil {
			return err
		}
		deadline := time.After(30 * time.Second)
		for got := 0; got < n; got++ {
			select {
			case at := <-acks:
				lat = append(lat, at.Sub(start))
			case <-deadline:
				return fmt.Errorf("%d proxies: only %d of %d ACKed a flip within 30 s", n, got, n)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	fmt.Printf("| %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", n, q(0.5), q(0.99), q(1), float64(rss)/1024, float64(rss-base)/float64(n))
	cancel()
	wg.Wait()
	return nil
}

// build makes a mesh of n proxy pods in one namespace, all behind one
// service, plus the endpoint pod that flips.
func (s *sim) build(n int) {
	s.snap = &catalog.Snapshot{Version: 1, Namespaces: []*catalog.Namespace{{Meta: catalog.Meta{Name: "sim"}}}}
	s.snap.Services = []*catalog.Service{{Meta: catalog.Meta{Namespace: "sim", Name: "target"}, Selector: map[string]string{"app": "target"},
		ClusterIP: netip.MustParseAddr("10.201.0.1"), Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 80, TargetPort: 8080}}}}
	s.snap.Pods = append(s.snap.Pods, &catalog.RunningPod{Pod: &catalog.Pod{Meta: catalog.Meta{Namespace: "sim", Name: "target",
		Labels: map[string]string{"app": "target"}}, Spec: catalog.PodSpec{ServiceAccount: "target"}}, IP: netip.MustParseAddr("10.200.255.1"), Ready: false})
	for i := range n {
		tok := fmt.Sprintf("token-%d-%d", i, time.Now().UnixNano())
		sum := sha256.Sum256([]byte(tok))
		s.tokens = append(s.tokens, tok)
		s.snap.Pods = append(s.snap.Pods, &catalog.RunningPod{
			Pod: &catalog.Pod{Meta: catalog.Meta{Namespace: "sim", Name: fmt.Sprintf("p%d", i)}, Spec: catalog.PodSpec{ServiceAccount: "sim"}},
			IP:  netip.AddrFrom4([4]byte{10, 200, byte(i / 250), byte(1 + i%250)}), Ready: true, Sidecar: true, BootstrapTokenSHA256: hex.EncodeToString(sum[:]),
		})
	}
}

// proxy gets a certificate with its token, then follows the stream,
// ACKing each update and reporting when it ACKed.
func (s *sim) proxy(ctx context.Context, i int, setup chan struct{}, ready chan<- error, acks chan<- time.Time) {
	setup <- struct{}{}
	released := false
	release := func() {
		if !released {
			released = true
			<-setup
		}
	}
	defer release()
	id, _ := identity.Parse("spiffe://cluster.local/ns/sim/sa/sim")
	server, _ := identity.Parse("spiffe://cluster.local/ns/trellis-system/sa/trellis-control")
	bundle, err := os.ReadFile(filepath.Join(s.dir, "control", "ca", "trust-bundle.pem"))
	if err != nil {
		ready <- err
		return
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	var store meshtls.Store
	store.Set(meshtls.Material{ID: id, Roots: pool})
	dial := func() (*grpc.ClientConn, error) {
		return grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(meshtls.ClientConfig(&store, meshtls.Exactly(server)))))
	}
	boot, err := dial()
	if err != nil {
		ready <- err
		return
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	resp, err := meshpb.NewCertificateServiceClient(boot).Sign(ctx, &meshpb.SignRequest{Csr: csr, BootstrapToken: s.tokens[i], PodNamespace: "sim", PodName: fmt.Sprintf("p%d", i)})
	boot.Close()
	if err != nil {
		ready <- err
		return
	}
	cert := tls.Certificate{Certificate: resp.GetChain(), PrivateKey: key}
	cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	store.Set(meshtls.Material{ID: id, Roots: pool, Cert: cert})
	conn, err := dial()
	if err != nil {
		ready <- err
		return
	}
	defer conn.Close()
	st, err := meshpb.NewConfigServiceClient(conn).StreamConfig(ctx)
	if err == nil {
		err = st.Send(&meshpb.ConfigRequest{PodNamespace: "sim", PodName: fmt.Sprintf("p%d", i)})
	}
	var first *meshpb.ConfigUpdate
	if err == nil {
		first, err = st.Recv()
	}
	if err == nil {
		err = st.Send(&meshpb.ConfigRequest{ResponseNonce: first.GetNonce(), Version: first.GetVersion()})
	}
	ready <- err
	release()
	for err == nil {
		var upd *meshpb.ConfigUpdate
		if upd, err = st.Recv(); err != nil {
			return
		}
		// As a proxy does before it ACKs: compile the policies it is to
		// enforce.
		if _, err = authz.Compile(authz.FromProto(upd.GetAuthorization())); err != nil {
			return
		}
		err = st.Send(&meshpb.ConfigRequest{ResponseNonce: upd.GetNonce(), Version: upd.GetVersion()})
		acks <- time.Now()
	}
}

func drain(ch chan time.Time) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitListen(addr string) error {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("control plane did not listen on %s", addr)
}

func rssKiB(pid int) int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return v
		}
	}
	return 0
}
