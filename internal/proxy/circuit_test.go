package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// policyMesh is newTestMeshApp's n apps behind the Service alpha, under a
// traffic policy.
func policyMesh(t *testing.T, n int, tp *meshpb.TrafficPolicy, app func(name string) http.Handler) *testMesh {
	t.Helper()
	m := newTestMeshApp(t, n, app)
	m.outbound.Update(&meshpb.ProxyConfig{Version: "policy",
		Workload: &meshpb.Workload{Namespace: "web", Name: "frontend", Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(), TrafficPolicy: tp,
			LoadBalancing: meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN,
			Ports:         []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_HTTP, Endpoints: m.endpoints}}}}})
	return m
}

// With 2 requests in flight and 1 waiting, the connection pool's limits,
// the next request is refused at once with 503 UO, over HTTP/1.1 and h2c;
// once they end, requests go through again, the waiting one first.
func TestCircuitBreakerOpensAtPendingLimit(t *testing.T) {
	gate := make(chan struct{})
	var held atomic.Int32
	one := uint32(1)
	m := policyMesh(t, 1, &meshpb.TrafficPolicy{Source: "db/alpha",
		ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 2, MaxPending: &one}},
		func(name string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hold" {
					held.Add(1)
					<-gate
				}
				fmt.Fprint(w, name)
			})
		})
	c := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	url := "http://" + m.appAddr
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(url + "/hold")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	circuit := m.outbound.routes.Load().byVIP[vip].circuit
	deadline := time.Now().Add(5 * time.Second)
	for held.Load() < 2 || waiting(circuit) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests reached the app and %d wait, want 2 and 1", held.Load(), waiting(circuit))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, cl := range appClients(t) {
		req, _ := http.NewRequest("GET", url+"/", nil)
		start := time.Now()
		resp, body := do(t, cl.c, req)
		if resp.StatusCode != 503 || resp.Header.Get(flagsHeader) != "UO" || time.Since(start) > time.Second {
			t.Errorf("%s: a request past the limits = %d %q (flags %q) after %v, want 503 UO at once",
				cl.name, resp.StatusCode, body, resp.Header.Get(flagsHeader), time.Since(start))
		}
	}
	close(gate)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 200 {
			t.Errorf("a request in flight or waiting = %d, want 200", code)
		}
	}
	for _, cl := range appClients(t) {
		req, _ := http.NewRequest("GET", url+"/", nil)
		get(t, cl.c, req, 200)
	}
}

func waiting(c *circuit) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// An endpoint answering 503 three times in a row is ejected (the policy's
// consecutive gateway errors) and gets no request for the ejection's time;
// then it is tried again and, mended, serves its share.
func TestOutlierEjectsAndReturns(t *testing.T) {
	for _, cl := range appClients(t) {
		t.Run(cl.name, func(t *testing.T) {
			var broken atomic.Bool
			broken.Store(true)
			m := policyMesh(t, 2, &meshpb.TrafficPolicy{Source: "db/alpha",
				OutlierDetection: &meshpb.OutlierDetection{ConsecutiveGateway: 3, BaseEjectionMs: 500, MaxEjectionPercent: 50}},
				func(name string) http.Handler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if name == "alpha-0" && broken.Load() {
							w.WriteHeader(http.StatusServiceUnavailable)
						}
						fmt.Fprint(w, name)
					})
				})
			url := "http://" + m.appAddr + "/"
			failed := 0
			for range 6 { // round robin: three to each
				req, _ := http.NewRequest("GET", url, nil)
				if resp, _ := do(t, cl.c, req); resp.StatusCode == 503 {
					failed++
				}
			}
			start := time.Now()
			if got := spread(t, cl.c, url, 20, 1); got["alpha-1"] != 20 && time.Since(start) < 500*time.Millisecond {
				t.Errorf("after %d failures, the next requests went to %v, want all to alpha-1: alpha-0 ejected", failed, got)
			}
			if !ejected(m, 0) {
				t.Error("the admin view does not show alpha-0 ejected")
			}
			broken.Store(false)
			time.Sleep(600 * time.Millisecond)
			if got := spread(t, cl.c, url, 20, 1); got["alpha-0"] < 5 {
				t.Errorf("after the ejection's time, requests went to %v, want alpha-0 back in the rotation", got)
			}
		})
	}
}

// ejected reports whether the admin view shows endpoint i of alpha out.
func ejected(m *testMesh, i int) bool {
	addr := fmt.Sprintf("%s:%d", m.endpoints[i].GetAddress(), m.endpoints[i].GetPort())
	for _, cs := range m.outbound.clusters() {
		for _, e := range cs.Endpoints {
			if e.Address == addr {
				return e.Ejected
			}
		}
	}
	return false
}

// With maxConnections 2, two TCP connections held open at once are
// tunnelled; a third is closed at once and counted with flag UO; once one
// of the two closes, a new one is tunnelled again. Over a TCP port, and
// an undeclared one where the bytes are not HTTP.
func TestTCPConnectionLimit(t *testing.T) {
	for _, proto := range []meshpb.Protocol{meshpb.Protocol_PROTOCOL_TCP, meshpb.Protocol_PROTOCOL_UNSPECIFIED} {
		t.Run(proto.String(), func(t *testing.T) {
			m := tunnelMesh(t, proto, &meshpb.TrafficPolicy{Source: "db/smtp-pool", ConnectionPool: &meshpb.ConnectionPool{MaxConnections: 2}},
				func(c net.Conn) { io.Copy(c, c) })
			src := m.outbound.Metrics
			dial := func() net.Conn {
				t.Helper()
				c, err := net.Dial("tcp", m.appAddr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				c.SetDeadline(time.Now().Add(5 * time.Second))
				return c
			}
			held := []net.Conn{dial(), dial()}
			for i, c := range held {
				if err := echoes(c, "\x00held"); err != nil {
					t.Fatalf("held connection %d: %v", i, err)
				}
			}

			third := dial()
			start := time.Now()
			io.WriteString(third, "\x00third") // an undeclared port's bytes decide it is TCP
			n, err := third.Read(make([]byte, 16))
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() || time.Since(start) > time.Second {
				t.Errorf("a third connection read %d bytes, %v after %v, want it closed at once", n, err, time.Since(start))
			}
			refused := []string{`response_flags="UO"`, `destination_service="smtp.db.svc.cluster.local"`, `source_workload="web-client"`}
			if got := scrapeWait(t, src, "istio_tcp_connections_opened_total", refused, 1); got != 1 {
				t.Errorf("istio_tcp_connections_opened_total%v = %v, want 1", refused, got)
			}

			held[0].Close()
			conns := m.outbound.routes.Load().byVIP[vip].conns
			for deadline := time.Now().Add(5 * time.Second); active(conns) > 1; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d connections counted open 5 s after one of two closed, want 1", active(conns))
				}
			}
			if err := echoes(dial(), "\x00again"); err != nil {
				t.Errorf("a connection after one closed: %v", err)
			}
			if err := echoes(held[1], "\x00still"); err != nil {
				t.Errorf("the connection still held: %v", err)
			}
			through := []string{`response_flags="-"`, `destination_service="smtp.db.svc.cluster.local"`}
			if got := scrapeWait(t, src, "istio_tcp_connections_opened_total", through, 3); got != 3 {
				t.Errorf("istio_tcp_connections_opened_total%v = %v, want 3", through, got)
			}
		})
	}
}

// echoes sends msg on c and reads it back from an echo app.
func echoes(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("echo of %q: %w", msg, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo = %q, want %q", buf, msg)
	}
	return nil
}

func active(c *circuit) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}
