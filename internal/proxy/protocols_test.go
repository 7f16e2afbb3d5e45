package proxy

// Protocol cases through a real sidecar pair (mTLS on loopback): WebSocket
// upgrades, many concurrent streams on one client connection, and large
// streaming bodies.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/trellis-mesh/trellis/internal/telemetry"
)

func TestWebSocketThroughTheMesh(t *testing.T) {
	m := newTestMeshApp(t, 1, func(name string) http.Handler {
		return websocket.Handler(func(ws *websocket.Conn) {
			for {
				var msg string
				if err := websocket.Message.Receive(ws, &msg); err != nil {
					return
				}
				if err := websocket.Message.Send(ws, name+" echoes "+msg); err != nil {
					return
				}
			}
		})
	})
	cfg, err := websocket.NewConfig("ws://alpha.db/chat", "http://alpha.db/")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", m.appAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	ws, err := websocket.NewClient(cfg, c)
	if err != nil {
		t.Fatalf("WebSocket handshake through the proxies: %v", err)
	}
	defer ws.Close()
	// Messages both ways, after the upgrade, on the same connection.
	for i := range 20 {
		want := fmt.Sprintf("message %d", i)
		if err := websocket.Message.Send(ws, want); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if got != "alpha-0 echoes "+want {
			t.Fatalf("received %q, want %q", got, "alpha-0 echoes "+want)
		}
	}
}

// One h2c client connection carries 100 requests at once: the app answers
// none of them until all 100 are in flight, so the test passes only if the
// proxies really run them concurrently.
func TestHundredConcurrentStreamsOnOneConnection(t *testing.T) {
	const n = 100
	var inFlight atomic.Int32
	all := make(chan struct{})
	var once sync.Once
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if inFlight.Add(1) == n {
				once.Do(func() { close(all) })
			}
			select {
			case <-all:
				fmt.Fprint(w, "ok")
			case <-time.After(15 * time.Second):
				http.Error(w, "not all requests arrived", http.StatusGatewayTimeout)
			}
		})
	})
	client, conns := oneH2CConnection(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(fmt.Sprintf("http://%s/stream/%d", m.appAddr, i))
			if err != nil {
				errs <- err
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("stream %d: %d %s", i, resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := inFlight.Load(); got != n {
		t.Errorf("the app saw %d requests, want %d", got, n)
	}
	if c := conns.Load(); c != 1 {
		t.Errorf("the client opened %d connections, want 1", c)
	}
}

// Shutdown (what SIGTERM triggers) lets a request in flight finish, refuses
// new connections, and cuts off what outlives the drain time.
func TestShutdownDrainsInFlightRequests(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-release
			fmt.Fprint(w, "finished")
		})
	})
	client := &http.Client{Timeout: 20 * time.Second}
	type result struct {
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, err := client.Get("http://" + m.appAddr + "/slow")
		if err != nil {
			slow <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		slow <- result{string(b), err}
	}()
	<-arrived

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 2)
	go func() { done <- m.outServer.Shutdown(ctx) }()
	go func() { done <- m.inbounds[0].Shutdown(ctx) }()
	time.Sleep(200 * time.Millisecond) // both are draining now
	if resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + m.appAddr + "/new"); err == nil {
		resp.Body.Close()
		t.Errorf("a new connection during the drain was served (%s), want it refused", resp.Status)
	}
	close(release)
	if r := <-slow; r.err != nil || r.body != "finished" {
		t.Errorf("the request in flight during the drain got %q, %v; want it to finish", r.body, r.err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Shutdown = %v, want a clean drain", err)
		}
	}

	// A request that outlives the drain time is cut off when it ends.
	m2 := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-r.Context().Done()
		})
	})
	go func() {
		resp, err := client.Get("http://" + m2.appAddr + "/forever")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-arrived
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	start := time.Now()
	if err := m2.inbounds[0].Shutdown(short); err == nil {
		t.Error("Shutdown with a request still running past the drain time returned no error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v with a 300 ms drain time", d)
	}
}

// Explicit mode: the app calls a loopback listener named after a service
// port, and its requests are balanced and carried over mTLS as captured
// ones are; the service's address comes from the config in force.
func TestExplicitUpstreamListener(t *testing.T) {
	m := newTestMesh(t, 2)
	up, err := ParseUpstream("alpha.db:80=127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", up.Listen.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go m.outServer.ServeExplicit(ln, up)
	got := spread(t, &http.Client{Timeout: 10 * time.Second}, "http://"+ln.Addr().String()+"/", 20, 1)
	if got["alpha-0"]+got["alpha-1"] != 20 || len(got) != 2 {
		t.Errorf("20 requests through the explicit listener reached %v, want both replicas and nothing else", got)
	}

	for _, bad := range []string{"alpha:80=127.0.0.1:1", "alpha.db=127.0.0.1:1", "alpha.db:80=10.0.0.1:1", "alpha.db:80", "alpha.db:0=127.0.0.1:1"} {
		if _, err := ParseUpstream(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseUpstream(%q) = %v, want an error naming it", bad, err)
		}
	}
}

// Slowloris and idle floods: a client dribbling its headers is cut off by
// the header timeout, connections past the limit are closed at once, and
// once the timeouts clear a flood, well-behaved clients are served again.
// (Timeouts are shortened here; the defaults are 10 s for headers.)
func TestSlowlorisAndIdleFloods(t *testing.T) {
	m := newTestMesh(t, 1)
	m.outServer.http.ReadHeaderTimeout = 300 * time.Millisecond // before any connection
	const limit = 20
	m.outServer.SetMaxConnections(limit)
	get := func() error {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + m.appAddr + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}

	t.Run("slowloris", func(t *testing.T) {
		c, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		var cut error
		for _, b := range []byte("GET / HTTP/1.1\r\nHost: alpha.db\r\nX-Slow: " + strings.Repeat("a", 100)) {
			if _, cut = c.Write([]byte{b}); cut != nil {
				break
			}
			if err := get(); err != nil { // others are served meanwhile
				t.Fatalf("a well-behaved client failed during the slowloris: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && cut == nil {
			t.Errorf("the dribbling connection was not closed: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("the dribbling connection lasted %v with a 300 ms header timeout", d)
		}
	})

	t.Run("idle flood up to the connection limit", func(t *testing.T) {
		var flood []net.Conn
		defer func() {
			for _, c := range flood {
				c.Close()
			}
		}()
		for range limit {
			c, err := net.Dial("tcp", m.appAddr)
			if err != nil {
				t.Fatal(err)
			}
			flood = append(flood, c)
		}
		// The listener accepts in its own time: wait until the proxy holds
		// all of them, then one more is refused at once.
		waitFor(t, "the flood to fill the limit", func() bool { return m.outServer.limit.open.Load() == limit })
		extra, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			t.Fatal(err)
		}
		extra.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := extra.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("a connection past the limit got %d bytes, %v; want it closed", n, err)
		}
		extra.Close()
		// The header timeout clears the idle flood; then clients get in.
		waitFor(t, "the header timeout to close the idle flood", func() bool { return m.outServer.limit.open.Load() == 0 })
		if err := get(); err != nil {
			t.Errorf("after the flood was cleared: %v", err)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A client that stops reading a large response is cut off once writes make
// no progress for the write-idle timeout (shortened here; default 5 min),
// and the request is recorded as ended by the downstream.
func TestSlowReaderIsCutOff(t *testing.T) {
	const size = 256 << 20
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			chunk := make([]byte, 1<<20)
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		})
	})
	metrics := telemetry.New("test")
	m.outbound.Metrics = metrics
	m.outbound.WriteIdleTimeout = 300 * time.Millisecond
	c, err := net.Dial("tcp", m.appAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: alpha.db\r\n\r\n")
	// Read the first bytes, then stop reading for longer than the timeout.
	if _, err := io.ReadFull(c, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`response_flags="DC"`}, 1); n != 1 {
		t.Fatalf("istio_requests_total{response_flags=DC} = %v, want 1: the stalled response was not cut off", n)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err == nil && n >= size {
		t.Errorf("the stalled client still got the whole %d-byte response", size)
	}

	// The same over HTTP/2: the stream, not the connection, is cut once
	// the client's flow-control window is full and writes stall.
	client, _ := oneH2CConnection(t)
	resp, err := client.Get("http://" + m.appAddr + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`response_flags="DC"`}, 2); n != 2 {
		t.Fatalf("istio_requests_total{response_flags=DC} = %v, want 2: the stalled HTTP/2 stream was not cut off", n)
	}
	if n, err := io.Copy(io.Discard, resp.Body); err == nil && n >= size {
		t.Errorf("the stalled HTTP/2 client still got the whole %d-byte response", size)
	}
}
