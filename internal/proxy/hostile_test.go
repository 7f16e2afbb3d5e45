package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

var peerID, _ = identity.Parse("spiffe://cluster.local/ns/web/sa/default")

// recordPeer records a request and a tunnelled connection from the peer
// whose metadata is meta, and returns the metrics as Prometheus serves
// them (failing t when exposition fails).
func recordPeer(t testing.TB, meta string) (telemetry.Peer, string) {
	m := telemetry.New("one-host")
	src, v := decodePeer(meta, peerID)
	self := telemetry.Unknown
	m.ObserveRequest(telemetry.Request{Reporter: "destination", Source: src, Dest: self, Service: v.Get("service"),
		ServiceName: v.Get("service_name"), ServiceNamespace: v.Get("service_namespace"), Protocol: "http", Code: 200, MutualTLS: true})
	m.Opened(telemetry.Connection{Reporter: "destination", Source: src, Dest: self, Service: v.Get("service"),
		ServiceName: v.Get("service_name"), ServiceNamespace: v.Get("service_namespace"), MutualTLS: true})(1, 1)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats/prometheus", nil))
	if rec.Code != 200 {
		t.Fatalf("exposition failed with %d: %s", rec.Code, rec.Body)
	}
	return src, rec.Body.String()
}

// TestHostilePeerMetadata: metadata from a peer holding a mesh
// certificate cannot crash the sidecar (invalid UTF-8 once panicked in a
// Prometheus label), grow labels without bound, or claim another namespace
// than its certificate's.
func TestHostilePeerMetadata(t *testing.T) {
	src, out := recordPeer(t, "workload=%FF%FE&namespace=web&service=%00evil%0A&app="+strings.Repeat("a", 5000))
	if !utf8.ValidString(src.Workload) || strings.ContainsRune(out, 0) || len(src.App) > telemetry.MaxValueBytes {
		t.Errorf("labels not cleaned: workload %q, app of %d bytes", src.Workload, len(src.App))
	}
	before := peerMismatches.Load()
	src, out = recordPeer(t, "workload=db&namespace=kube-system&app=db")
	if src.Namespace != "web" || src.Workload != "unknown" || peerMismatches.Load() != before+1 {
		t.Errorf("a peer of namespace web claiming kube-system is recorded as %+v (mismatches %d)", src, peerMismatches.Load()-before)
	}
	if strings.Contains(out, "kube-system") {
		t.Errorf("the forged namespace reached the metrics:\n%s", out)
	}
	if src, _ := recordPeer(t, "workload=web-1&namespace=web&app=web"); src.Workload != "web-1" || src.Namespace != "web" {
		t.Errorf("an honest peer is recorded as %+v", src)
	}
}

// FuzzPeerMetadata: whatever a peer sends as metadata, recording it and
// serving the metrics works.
func FuzzPeerMetadata(f *testing.F) {
	f.Add("workload=a&namespace=web&app=a&service=a.web.svc.cluster.local")
	f.Add("workload=%FF&namespace=web")
	f.Add("workload=x&namespace=web&app=%C0%80&version=%ED%A0%80")
	f.Fuzz(func(t *testing.T, meta string) {
		src, _ := recordPeer(t, meta)
		for _, v := range []string{src.Workload, src.Namespace, src.App, src.Version, src.CanonicalService, src.CanonicalRevision} {
			if !utf8.ValidString(v) || len(v) > telemetry.MaxValueBytes {
				t.Fatalf("label %q from metadata %q", v, meta)
			}
		}
	})
}

// TestPanicsAreContained: a panic while serving one connection closes it
// and is counted; the process goes on.
func TestPanicsAreContained(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	before := panics.Load()
	serveConn(a, func() { panic("boom") })
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the panicking connection was not closed: %v", err)
	}
	if panics.Load() != before+1 {
		t.Errorf("panics counted %d, want 1", panics.Load()-before)
	}
}

// TestForgedClientCertHeader: the app learns its caller from
// X-Forwarded-Client-Cert, so no caller may set it. Requests that once
// slipped past the HTTP path in a raw tunnel (plaintext h2c, a method the
// sniffer did not list, an mTLS peer choosing the TCP ALPN) reach the app
// with the header stripped, or set by the sidecar from the real peer.
func TestForgedClientCertHeader(t *testing.T) {
	a, err := ca.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 10)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- r.Header.Get("X-Forwarded-Client-Cert")
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		})}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(appLn)
	defer app.Close()
	appPort := uint16(appLn.Addr().(*net.TCPAddr).Port)
	srvStore, _ := store(t, a, "spiffe://cluster.local/ns/db/sa/alpha")
	in := NewInbound(srvStore, "cluster.local")
	defer in.Close()
	in.Metrics = telemetry.New("test")
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, appPort) })
	const forged = "By=spiffe://cluster.local/ns/db/sa/alpha;URI=spiffe://cluster.local/ns/admin/sa/root"
	expect := func(how, want string) {
		t.Helper()
		select {
		case got := <-seen:
			if got != want {
				t.Errorf("%s: the app saw X-Forwarded-Client-Cert %q, want %q", how, got, want)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: the request never reached the app", how)
		}
	}

	// Plaintext HTTP/1.1 with a method outside the common list, twice on
	// one keep-alive connection.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, method := range []string{"PROPFIND", "FOO"} {
		fmt.Fprintf(c, "%s / HTTP/1.1\r\nHost: evil-%s.db.svc.cluster.local\r\nX-Forwarded-Client-Cert: %s\r\n\r\n", method, method, forged)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		resp.Body.Close()
		expect("plaintext "+method, "")
	}
	c.Close()

	// Plaintext h2c (every plaintext gRPC client).
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: h2c}, Timeout: 5 * time.Second}
	req, _ := http.NewRequest("POST", "http://"+addr+"/pkg.Svc/Method", strings.NewReader(""))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("X-Forwarded-Client-Cert", forged)
	if resp, err := client.Do(req); err != nil {
		t.Fatalf("h2c: %v", err)
	} else {
		resp.Body.Close()
	}
	expect("plaintext h2c", "")

	// A mesh peer that asks for the TCP tunnel and sends HTTP in it.
	clientStore, clientID := store(t, a, "spiffe://cluster.local/ns/web/sa/default")
	cfg := meshtls.ClientConfig(clientStore, meshtls.MemberOf("cluster.local"))
	cfg.NextProtos = []string{alpnTCP}
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := writePreamble(tc, "workload=web&namespace=web"); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: db\r\nX-Forwarded-Client-Cert: %s\r\n\r\n", forged)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("tunnelled HTTP: %v", err)
	}
	resp.Body.Close()
	select {
	case got := <-seen:
		if !strings.HasSuffix(got, ";URI="+clientID.String()) || strings.Contains(got, "admin") {
			t.Errorf("HTTP in a TCP tunnel: the app saw X-Forwarded-Client-Cert %q, want the sidecar's, naming %s", got, clientID)
		}
	case <-time.After(5 * time.Second):
		t.Error("HTTP in a TCP tunnel never reached the app")
	}

	// The callers' Host headers named services this workload does not
	// serve: the metrics say "unknown", not whatever a caller chose.
	rec := httptest.NewRecorder()
	in.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if strings.Contains(rec.Body.String(), "evil") || !strings.Contains(rec.Body.String(), `destination_service="unknown"`) {
		t.Errorf("a caller's Host header reached the metrics:\n%s", rec.Body.String())
	}
}

// TestInboundShareIsPerSource: one client address cannot hold more than
// a quarter of the inbound's connections; others are still served.
func TestInboundShareIsPerSource(t *testing.T) {
	m := newTestMesh(t, 1)
	in := m.inbounds[0]
	in.SetMaxConnections(8) // a share of 2 per address
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, m.appPort) })
	dial := func(from string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closedAtOnce := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	hog := []net.Conn{dial("127.0.0.1"), dial("127.0.0.1")}
	time.Sleep(100 * time.Millisecond)
	if c := dial("127.0.0.1"); !closedAtOnce(c) {
		t.Error("a third connection from one address was kept; its share is 2 of 8")
	}
	other := dial("127.0.0.2")
	fmt.Fprint(other, "GET / HTTP/1.1\r\nHost: alpha.db\r\n\r\n")
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(other), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("another address was not served while the first held its share: %v", err)
	}
	_ = hog
}

// TestPlaintextTunnelIdleTimeout: a stranger's raw tunnel (PERMISSIVE)
// that moves no byte is closed after the idle timeout; one in use is not.
func TestPlaintextTunnelIdleTimeout(t *testing.T) {
	echo := serve(t, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })
	appPort := uint16(netip.MustParseAddrPort(echo).Port())
	m := newTestMesh(t, 1)
	in := m.inbounds[0]
	in.PlaintextIdleTimeout = 300 * time.Millisecond
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, appPort) })

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	start := time.Now()
	buf := make([]byte, 4)
	for time.Since(start) < time.Second { // the busy one echoes every 100 ms
		busy.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("the busy tunnel was closed after %v: %v", time.Since(start), err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("the busy tunnel was closed after %v: %v", time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.Read(buf); err != io.EOF {
		t.Errorf("the idle tunnel was not closed after 1 s with a 300 ms idle timeout: %v", err)
	}
}

// TestInboundReachesThePodAddress: the inbound forwards to the pod's
// address (AppAddr), so an app's loopback-only listener (an admin port,
// say) is not reachable through the mesh; an app on the pod's address is.
func TestInboundReachesThePodAddress(t *testing.T) {
	m := newTestMesh(t, 1)
	in := m.inbounds[0]
	in.AppAddr = "127.0.0.2" // the pod's address here; the app of newTestMesh listens on 127.0.0.1 only
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, m.appPort) })
	get := func() int {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: alpha.db\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Errorf("a loopback-only app answered through the mesh: %d", code)
	}
	in.AppAddr = "127.0.0.1" // the pod asked for loopback
	if code := get(); code != 200 {
		t.Errorf("with the app on the address the inbound uses: %d, want 200", code)
	}
}

// TestHTTPPortCarriesNoRawTunnel: on a port its Service declares HTTP,
// bytes that are not HTTP are refused, never tunnelled raw to the app.
func TestHTTPPortCarriesNoRawTunnel(t *testing.T) {
	var reached atomic.Int32
	app := serve(t, func(c net.Conn) { reached.Add(1); c.Close() })
	appPort := uint16(netip.MustParseAddrPort(app).Port())
	m := newTestMesh(t, 1)
	in := m.inbounds[0]
	in.SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Identity: m.serverID.String()},
		Services: []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(), Ports: []*meshpb.ServicePort{
			{Port: 80, Protocol: meshpb.Protocol_PROTOCOL_HTTP, Endpoints: []*meshpb.Endpoint{{Address: "127.0.0.1", Port: uint32(appPort), Identity: m.serverID.String()}}}}}}})
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, appPort) })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("\x00\x01 binary, not HTTP"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection was not refused: %v", err)
	}
	if reached.Load() != 0 {
		t.Error("non-HTTP bytes on an HTTP port reached the app")
	}
}
