package proxy

// Sidecar-to-sidecar forwarding over real sockets and real mutual TLS on
// loopback: an app's single connection to its outbound proxy is spread,
// request by request, over three endpoints' inbound proxies.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

var vip = netip.MustParseAddrPort("10.98.0.1:80")

type testMesh struct {
	authority *ca.Authority
	client    *meshtls.Store
	inbounds  []*Inbound
	endpoints []*meshpb.Endpoint
	outbound  *Outbound
	outServer *OutboundServer
	appPort   uint16 // the last app's port, behind inbounds[len-1]
	appAddr   string // the explicit outbound listener the app calls
	serverID  identity.ID
	lb        meshpb.LoadBalancing
}

func store(t testing.TB, a *ca.Authority, who string) (*meshtls.Store, identity.ID) {
	t.Helper()
	id, err := identity.Parse(who)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := a.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.Bundle()[0])
	s := &meshtls.Store{}
	s.Set(meshtls.Material{ID: id, Cert: svid.TLSCertificate(), Roots: roots})
	return s, id
}

func serve(t testing.TB, accept func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go accept(c)
		}
	}()
	return ln.Addr().String()
}

// newTestMesh starts n app servers answering with their name, each behind
// an inbound proxy, and an outbound proxy routing vip to them.
func newTestMesh(t *testing.T, n int) *testMesh {
	t.Helper()
	return newTestMeshApp(t, n, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, name)
		})
	})
}

// newTestMeshApp is newTestMesh with the app servers' handler.
func newTestMeshApp(t testing.TB, n int, app func(name string) http.Handler) *testMesh {
	t.Helper()
	a, err := ca.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	m := &testMesh{authority: a}
	m.client, _ = store(t, a, "spiffe://cluster.local/ns/web/sa/default")
	for i := range n {
		name := fmt.Sprintf("alpha-%d", i)
		app := &http.Server{Handler: app(name), ReadHeaderTimeout: 10 * time.Second}
		appLn, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go app.Serve(appLn)
		t.Cleanup(func() { app.Close() })
		appPort := uint16(appLn.Addr().(*net.TCPAddr).Port)
		m.appPort = appPort
		var srvStore *meshtls.Store
		srvStore, m.serverID = store(t, a, "spiffe://cluster.local/ns/db/sa/alpha")
		in := NewInbound(srvStore, "cluster.local")
		t.Cleanup(func() { in.Close() })
		m.inbounds = append(m.inbounds, in)
		addr := netip.MustParseAddrPort(serve(t, func(c net.Conn) { in.HandleConn(c, appPort) }))
		m.endpoints = append(m.endpoints, &meshpb.Endpoint{Address: addr.Addr().String(), Port: uint32(addr.Port()), Identity: m.serverID.String()})
	}
	m.outbound = NewOutbound(m.client, &net.Dialer{})
	m.update(t, m.endpoints)
	srv := NewOutboundServer(m.outbound, m.client, &net.Dialer{})
	m.outServer = srv
	t.Cleanup(func() { srv.Close() })
	m.appAddr = serve(t, func(c net.Conn) { srv.HandleConn(c, vip) })
	return m
}

func (m *testMesh) update(t testing.TB, eps []*meshpb.Endpoint) {
	t.Helper()
	m.outbound.Update(&meshpb.ProxyConfig{Version: "t", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(), LoadBalancing: m.lb,
			Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_HTTP, Endpoints: eps}}}}})
}

// oneH2CConnection returns an HTTP/2 prior-knowledge client held to one
// connection at a time, and the count of connections it opened.
func oneH2CConnection(t *testing.T) (*http.Client, *atomic.Int32) {
	conns := new(atomic.Int32)
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: h2c, MaxConnsPerHost: 1, DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
		conns.Add(1)
		return (&net.Dialer{}).DialContext(ctx, n, a)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, conns
}

// spread sends n requests with client and counts the answers.
func spread(t *testing.T, client *http.Client, url string, n, workers int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				resp, err := client.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				key := string(body)
				if resp.StatusCode != 200 {
					key = fmt.Sprintf("%d %s", resp.StatusCode, body)
				}
				mu.Lock()
				got[key]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got
}

func checkEven(t *testing.T, got map[string]int, n, replicas int) {
	t.Helper()
	want := n / replicas
	if len(got) != replicas {
		t.Fatalf("answers = %v, want %d replicas", got, replicas)
	}
	for k, v := range got {
		if v < want*9/10 || v > want*11/10 {
			t.Errorf("%s served %d of %d, want %d ± 10%% (all: %v)", k, v, n, want, got)
		}
	}
}

// Every policy splits one connection's 3000 requests over three equal
// replicas evenly (1000 ± 10 % each), the default peak-EWMA included: it
// must tell measurement noise on a busy machine from a slower replica.
func TestPerRequestBalancingOverOneConnection(t *testing.T) {
	for _, lb := range []meshpb.LoadBalancing{
		meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN,
		meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST,
		meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA,
	} {
		t.Run(lb.String(), func(t *testing.T) {
			m := newTestMesh(t, 3)
			m.lb = lb
			m.update(t, m.endpoints)
			t.Run("HTTP/1.1 keep-alive", func(t *testing.T) {
				// One raw connection, requests one after another: exactly
				// what a keep-alive client does, with no pool to reconnect.
				c, err := net.Dial("tcp", m.appAddr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				br := bufio.NewReader(c)
				got := map[string]int{}
				for i := 0; i < 3000; i++ {
					if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: alpha.db\r\n\r\n"); err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("response %d: %v (the proxy closed the app's connection?)", i, err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					got[string(body)]++
				}
				checkEven(t, got, 3000, 3)
			})
			t.Run("HTTP/2 prior knowledge", func(t *testing.T) {
				client, conns := oneH2CConnection(t)
				checkEven(t, spread(t, client, "http://"+m.appAddr+"/", 3000, 8), 3000, 3)
				if conns.Load() != 1 {
					t.Errorf("the app opened %d connections, want 1", conns.Load())
				}
			})
		})
	}
}

func TestProxyFailuresSayWhy(t *testing.T) {
	m := newTestMesh(t, 1)
	// Set before any request: a field changed while requests run races
	// with their recording.
	var log syncBuffer
	m.outbound.AccessLog = slog.New(slog.NewJSONHandler(&log, nil))
	get := func() (int, string, string) {
		resp, err := http.Get("http://" + m.appAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Trellis-Response-Flags"), string(b)
	}
	wrong := proto.Clone(m.endpoints[0]).(*meshpb.Endpoint)
	wrong.Identity = "spiffe://cluster.local/ns/db/sa/impostor"
	m.update(t, []*meshpb.Endpoint{wrong})
	if code, flag, body := get(); code != 503 || flag != "UF" || !strings.Contains(body, "peer is not the expected identity") {
		t.Errorf("endpoint with another identity: %d %s %q; want 503 UF naming the identity mismatch", code, flag, body)
	}
	m.update(t, nil)
	if code, flag, body := get(); code != 503 || flag != "UH" || !strings.Contains(body, "no healthy upstream") {
		t.Errorf("no endpoints: %d %s %q; want 503 UH no healthy upstream", code, flag, body)
	}
	// The access log says the same (written as the handler returns, which
	// may be just after the client has the response).
	last := func() string {
		lines := strings.Split(strings.TrimSpace(log.String()), "\n")
		return lines[len(lines)-1]
	}
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(last(), `"UH"`) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	var entry struct {
		Msg, Flags, Reason, Method, Path string
		Code                             int
	}
	if err := json.Unmarshal([]byte(last()), &entry); err != nil {
		t.Fatalf("access log %q: %v", last(), err)
	}
	if entry.Msg != "access" || entry.Code != 503 || entry.Flags != "UH" || entry.Method != "GET" || entry.Path != "/" ||
		!strings.Contains(entry.Reason, "no healthy upstream") {
		t.Errorf("access log entry = %+v, want GET / 503 UH with the reason", entry)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestInboundPeerAuthentication(t *testing.T) {
	m := newTestMesh(t, 1)
	direct := "http://" + net.JoinHostPort(m.endpoints[0].GetAddress(), fmt.Sprint(m.endpoints[0].GetPort())) + "/"
	resp, err := http.Get(direct)
	if err != nil {
		t.Fatalf("PERMISSIVE: plaintext request failed: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "alpha-0" {
		t.Errorf("PERMISSIVE: plaintext answer %q, want alpha-0", b)
	}
	m.inbounds[0].SetPolicy(&meshpb.InboundPolicy{Mode: meshpb.MTLSMode_MTLS_MODE_STRICT})
	dst := telemetry.New("test")
	m.inbounds[0].Metrics = dst
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := c.Get(direct); err == nil {
		resp.Body.Close()
		t.Errorf("STRICT: plaintext request got %s, want the connection refused", resp.Status)
	}
	// The dashboard draws refusals from this count (Envoy's NR flag).
	if n := scrapeWait(t, dst, "istio_tcp_connections_opened_total", []string{`response_flags="NR"`, `source_workload="unknown"`}, 1); n != 1 {
		t.Errorf("STRICT: refused plaintext connections counted %v times, want 1", n)
	}
	if got := spread(t, http.DefaultClient, "http://"+m.appAddr+"/", 10, 1); got["alpha-0"] != 10 {
		t.Errorf("STRICT: mesh requests = %v, want all 10 served", got)
	}
}

// Opaque TCP is balanced per connection and tunnelled over mTLS; a
// server-first protocol on an undeclared port works after the short
// detection delay.
func TestTCPTunnel(t *testing.T) {
	for _, proto := range []meshpb.Protocol{meshpb.Protocol_PROTOCOL_TCP, meshpb.Protocol_PROTOCOL_UNSPECIFIED} {
		t.Run(proto.String(), func(t *testing.T) {
			m := tunnelMesh(t, proto, nil, func(c net.Conn) {
				io.WriteString(c, "220 ready\n")
				io.Copy(c, c)
			})
			src, dst := m.outbound.Metrics, m.inbounds[0].Metrics
			c, err := net.Dial("tcp", m.appAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := io.ReadAtLeast(c, buf, len("220 ready\n"))
			if err != nil || string(buf[:n]) != "220 ready\n" {
				t.Fatalf("greeting = %q, %v", buf[:n], err)
			}
			io.WriteString(c, "\x00binary")
			n, err = io.ReadAtLeast(c, buf, len("\x00binary"))
			if err != nil || string(buf[:n]) != "\x00binary" {
				t.Errorf("echo = %q, %v", buf[:n], err)
			}
			c.Close()
			// Request direction: 7 bytes; response: the greeting and the echo.
			want := map[string]float64{"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
				"istio_tcp_received_bytes_total": 7, "istio_tcp_sent_bytes_total": 17}
			// Both reporters know the caller's workload and the service: the
			// tunnel's preamble carries them to the destination.
			for _, mm := range []*telemetry.Metrics{src, dst} {
				for metric, v := range want {
					labels := []string{`connection_security_policy="mutual_tls"`, `source_workload="web-client"`,
						`source_workload_namespace="web"`, `destination_service="smtp.db.svc.cluster.local"`}
					if got := scrapeWait(t, mm, metric, labels, v); got != v {
						t.Errorf("%s = %v, want %v", metric, got, v)
					}
				}
			}
		})
	}
}

// tunnelMesh is newTestMesh with, instead of its HTTP app, a TCP app that
// serves each connection with app (and closes it), behind the Service
// db/smtp on vip with protocol proto and traffic policy tp; both sidecars
// record metrics, set before the config that lets connections through.
func tunnelMesh(t *testing.T, proto meshpb.Protocol, tp *meshpb.TrafficPolicy, app func(net.Conn)) *testMesh {
	t.Helper()
	m := newTestMesh(t, 1)
	appAddr := serve(t, func(c net.Conn) {
		defer c.Close()
		app(c)
	})
	appPort := uint16(netip.MustParseAddrPort(appAddr).Port())
	in := m.inbounds[0]
	m.outbound.Metrics, in.Metrics = telemetry.New("test"), telemetry.New("test")
	inAddr := netip.MustParseAddrPort(serve(t, func(c net.Conn) { in.HandleConn(c, appPort) }))
	services := []*meshpb.Service{{Namespace: "db", Name: "smtp", Vip: vip.Addr().String(), TrafficPolicy: tp,
		Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: proto, Endpoints: []*meshpb.Endpoint{
			{Address: inAddr.Addr().String(), Port: uint32(inAddr.Port()), Identity: m.serverID.String()}}}}}}
	m.outbound.Update(&meshpb.ProxyConfig{Version: "t", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default",
		Name: "web-client", Namespace: "web"}, Services: services})
	in.SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Identity: m.serverID.String()}, Services: services})
	return m
}

// Both reporters count each request with Istio's labels: the source from
// its own config, the destination from the caller's mTLS identity and the
// metadata the source sidecar sent.
func TestIstioStandardMetrics(t *testing.T) {
	m := newTestMesh(t, 1)
	src, dst := telemetry.New("test"), telemetry.New("test")
	m.outbound.Metrics = src
	m.inbounds[0].Metrics = dst
	services := []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(),
		Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_HTTP,
			Endpoints: []*meshpb.Endpoint{{Address: m.endpoints[0].GetAddress(), Port: m.endpoints[0].GetPort(),
				Identity: m.serverID.String(), Workload: "alpha", Namespace: "db", Labels: map[string]string{"app": "alpha", "version": "v2"}}}}}}}
	m.inbounds[0].SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha", Identity: m.serverID.String(),
		Labels: map[string]string{"app": "alpha", "version": "v2"}}, Services: services})
	m.outbound.Update(&meshpb.ProxyConfig{Version: "t", Workload: &meshpb.Workload{Namespace: "web", Name: "frontend",
		Identity: "spiffe://cluster.local/ns/web/sa/default", Labels: map[string]string{"app": "frontend"}}, Services: services})
	for range 7 {
		resp, err := http.Get("http://" + m.appAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	common := []string{`source_workload="frontend"`, `source_workload_namespace="web"`, `source_canonical_revision="latest"`,
		`destination_workload="alpha"`, `destination_version="v2"`, `destination_service="alpha.db.svc.cluster.local"`,
		`destination_principal="spiffe://cluster.local/ns/db/sa/alpha"`, `connection_security_policy="mutual_tls"`,
		`response_code="200"`, `request_protocol="http"`}
	for _, c := range []struct {
		name string
		m    *telemetry.Metrics
		want []string
	}{
		{"source", src, append([]string{`reporter="source"`}, common...)},
		{"destination", dst, append([]string{`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/web/sa/default"`}, common...)},
	} {
		if got := scrapeWait(t, c.m, "istio_requests_total", c.want, 7); got != 7 {
			t.Errorf("%s reporter: istio_requests_total%v = %v, want 7", c.name, c.want, got)
		}
		if got := scrapeWait(t, c.m, "istio_request_duration_milliseconds_count", c.want, 7); got != 7 {
			t.Errorf("%s reporter: duration count = %v, want 7", c.name, got)
		}
	}
	// A plaintext caller from outside the mesh is counted as such.
	direct := "http://" + net.JoinHostPort(m.endpoints[0].GetAddress(), fmt.Sprint(m.endpoints[0].GetPort())) + "/"
	resp, err := http.Get(direct)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := scrapeWait(t, dst, "istio_requests_total", []string{`connection_security_policy="none"`, `source_workload="unknown"`}, 1); got != 1 {
		t.Errorf("plaintext request counted %v times as none/unknown, want 1", got)
	}
}

// scrapeWait scrapes until the value is want or 2 s pass: a request is
// recorded when its handler returns, which may be just after the client
// has read the whole response.
func scrapeWait(t *testing.T, m *telemetry.Metrics, metric string, labels []string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	got := scrape(t, m, metric, labels)
	for got != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		got = scrape(t, m, metric, labels)
	}
	return got
}

// scrape returns the value of the series of metric whose labels include all
// of want, from the Prometheus text exposition.
func scrape(t *testing.T, m *telemetry.Metrics, metric string, want []string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats/prometheus", nil))
	var total float64
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			var v float64
			fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
			total += v
		}
	}
	return total
}
