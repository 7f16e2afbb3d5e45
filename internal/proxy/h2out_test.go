package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// The app's h2c on the engine: a request body goes up and the response's
// trailers come back, each request counted once by the source; a request
// the mesh would read differently is refused before it leaves; a caller
// that gives up mid-response cancels the app's request and is recorded
// as DC; a service that gains an endpoint outside the mesh is served
// (plain HTTP/1.1, by net/http) on the same connection.
func TestOutboundEngineHTTP2(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	m := newTestMeshApp(t, 1, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				w.Write([]byte("first"))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				cancelled <- struct{}{}
				return
			}
			n, _ := io.Copy(io.Discard, r.Body)
			w.Header().Set("Trailer", "X-Sum")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, "%s got %d bytes, peer field %q", name, n, r.Header.Get("X-Trellis-Peer"))
			w.Header().Set("X-Sum", fmt.Sprint(n))
		})
	})
	metrics := telemetry.New("test")
	m.outbound.Metrics = metrics
	client, conns := oneH2CConnection(t)
	url := "http://" + m.appAddr

	req, _ := http.NewRequest("POST", url+"/upload", strings.NewReader(strings.Repeat("x", 3<<20)))
	req.Header.Set(peerHeader, "forged by the app")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || string(body) != `alpha-0 got 3145728 bytes, peer field ""` || resp.Trailer.Get("X-Sum") != "3145728" {
		t.Errorf("got %s %q, trailer X-Sum %q", resp.Status, body, resp.Trailer.Get("X-Sum"))
	}
	m.outbound.h2Conns.mu.Lock()
	served := len(m.outbound.h2Conns.conns)
	m.outbound.h2Conns.mu.Unlock()
	if served != 1 {
		t.Errorf("the engine holds %d app HTTP/2 connections, want the client's one", served)
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`reporter="source"`, `response_code="201"`, `connection_security_policy="mutual_tls"`}, 1); n != 1 {
		t.Errorf("the source counted %v requests answered 201 over mTLS, want 1", n)
	}

	// Refused before it leaves: a method that is not a token.
	got := make(chan string, 1)
	raw, err := net.Dial("tcp", m.appAddr)
	if err != nil {
		t.Fatal(err)
	}
	conn := h2.NewClientConn(raw, h2.Config{}, statusOnly(got))
	go conn.Run()
	if _, err := conn.NewStream(nil, false, true, h2.Field{Name: ":method", Value: "GET /admin"}, h2.Field{Name: ":scheme", Value: "http"},
		h2.Field{Name: ":authority", Value: "alpha.db"}, h2.Field{Name: ":path", Value: "/public"}); err != nil {
		t.Fatal(err)
	}
	select {
	case status := <-got:
		if status != "400" {
			t.Errorf("a method with a space: %s, want 400", status)
		}
	case <-time.After(5 * time.Second):
		t.Error("a method with a space: no answer")
	}
	conn.Close()

	// The caller gives up mid-response.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx, "GET", url+"/slow", nil)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the app's request went on after the caller gave up")
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`reporter="source"`, `response_flags="DC"`}, 1); n != 1 {
		t.Errorf("the source counted %v requests as DC, want 1", n)
	}

	// The service's endpoint is now a plain server outside the mesh.
	plain := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain %s", r.Proto)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go plain.Serve(ln)
	t.Cleanup(func() { plain.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	m.update(t, []*meshpb.Endpoint{{Address: "127.0.0.1", Port: uint32(port)}})
	resp, err = client.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "plain HTTP/1.1" {
		t.Errorf("outside the mesh: got %s %q, want the plain server's answer", resp.Status, body)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("the client opened %d connections, want 1", n)
	}
	// A new connection to it is the engine's too.
	other, _ := oneH2CConnection(t)
	resp, err = other.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	m.outbound.h2Conns.mu.Lock()
	served = len(m.outbound.h2Conns.conns)
	m.outbound.h2Conns.mu.Unlock()
	if string(body) != "plain HTTP/1.1" || served != 2 {
		t.Errorf("outside the mesh, a new connection: got %s %q; the engine holds %d connections, want 2", resp.Status, body, served)
	}
}
