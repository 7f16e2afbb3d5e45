package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// The engine's outbound HTTP/1.1 path: requests on one kept-alive
// connection, with and without bodies (Content-Length and chunked), reach
// the app through the inbound sidecar and the answers come back framed for
// HTTP/1.1.
func TestEngineOutboundHTTP1(t *testing.T) {
	later := make(chan struct{})
	m := newTestMeshApp(t, 2, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if r.URL.Path == "/later" { // the head now, the body once the client has it
				w.WriteHeader(http.StatusAccepted)
				w.(http.Flusher).Flush()
				select {
				case <-later:
				case <-r.Context().Done():
				}
				w.Write([]byte("late"))
				return
			}
			if r.URL.Path == "/stream" {
				w.Write([]byte(name)) // no length: chunked to the client
				w.(http.Flusher).Flush()
				w.Write(body)
				return
			}
			fmt.Fprintf(w, "%s %s %d", name, r.URL.Path, len(body))
		})
	})
	c, br := dialApp(t, m.appAddr)
	seen := map[string]int{}
	for i := range 20 {
		body := bytes.Repeat([]byte("x"), i*5000)
		req, _ := http.NewRequest("POST", "http://alpha.db/q/"+fmt.Sprint(i), bytes.NewReader(body))
		if i%2 == 1 {
			req.ContentLength = -1 // chunked
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		name, rest, _ := strings.Cut(string(got), " ")
		if err != nil || resp.StatusCode != 200 || rest != fmt.Sprintf("/q/%d %d", i, len(body)) {
			t.Fatalf("request %d: %d %q, %v", i, resp.StatusCode, got, err)
		}
		seen[name]++
	}
	if len(seen) != 2 {
		t.Errorf("20 requests on one connection reached %v, want both endpoints", seen)
	}
	req, _ := http.NewRequest("POST", "http://alpha.db/stream", strings.NewReader("tail"))
	req.Write(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if !strings.HasSuffix(string(got), "tail") || len(resp.TransferEncoding) == 0 {
		t.Errorf("streamed response: %q, transfer-encoding %v; want chunked, ending in the body sent", got, resp.TransferEncoding)
	}

	// A head the body does not follow at once still reaches the client
	// (the engine holds a head back only to join a body in the same read).
	req, _ = http.NewRequest("GET", "http://alpha.db/later", nil)
	req.Write(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a response head sent before its body: %v, %v", resp, err)
	}
	close(later)
	if got, err := io.ReadAll(resp.Body); err != nil || string(got) != "late" {
		t.Errorf("the body after it: %q, %v", got, err)
	}
}

// What the engine leaves to net/http is still served, on the same kind of
// connection: a service with an endpoint outside the mesh (plain HTTP) and
// a request that waits for 100 Continue before sending its body.
func TestEngineHandsOffWhatItDoesNotServe(t *testing.T) {
	m := newTestMeshApp(t, 1, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %d", name, len(body))
		})
	})

	// Expect: 100-continue: the body goes only after the interim answer.
	c, br := dialApp(t, m.appAddr)
	fmt.Fprint(c, "POST /upload HTTP/1.1\r\nHost: alpha.db\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("before the body: %q, %v; want 100 Continue", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil { // the interim answer's end
		t.Fatal(err)
	}
	fmt.Fprint(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode < 200 { // more interim answers may come (the next hops')
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != "alpha-0 5" {
		t.Errorf("after 100 Continue: %d %q, want 200 \"alpha-0 5\"", resp.StatusCode, got)
	}

	// An endpoint without a sidecar takes plain HTTP, and no mesh
	// metadata reaches it.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain peer=%q", r.Header.Get(peerHeader))
	}))
	defer plain.Close()
	addr := netip.MustParseAddrPort(plain.Listener.Addr().String())
	m.update(t, []*meshpb.Endpoint{{Address: addr.Addr().String(), Port: uint32(addr.Port())}})
	for range 3 { // on one connection
		resp, err := http.Get("http://" + m.appAddr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != `plain peer=""` {
			t.Fatalf("to an endpoint outside the mesh: %d %q", resp.StatusCode, got)
		}
	}
}

// An interim answer (103 Early Hints) reaches an HTTP/1.1 client before
// the response; an HTTP/1.0 client, which cannot read one, gets only the
// response.
func TestEngineInterimResponses(t *testing.T) {
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			fmt.Fprint(w, "done")
		})
	})
	for _, tt := range []struct {
		proto, want string
	}{
		{"HTTP/1.1", "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\n"},
	} {
		c, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET /hints %s\r\nHost: alpha.db\r\nConnection: close\r\n\r\n", tt.proto)
		got, _ := io.ReadAll(c)
		c.Close()
		if !bytes.HasPrefix(got, []byte(tt.want)) || !bytes.HasSuffix(got, []byte("done")) {
			t.Errorf("%s client got %q, want it to start %q and end with the body", tt.proto, got, tt.want)
		}
	}
}

// The engine makes each request a client span: it continues the trace the
// app sent, hands the next hop a traceparent naming its own span, and logs
// the trace ID with the request.
func TestEngineTraces(t *testing.T) {
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.Header.Get("traceparent"))
		})
	})
	exp := &keptSpans{}
	m.outbound.Tracing = telemetry.NewTracing(telemetry.TracingConfig{Sampling: 100, Exporter: exp, Service: "web"})
	var log syncBuffer
	m.outbound.AccessLog = slog.New(slog.NewJSONHandler(&log, nil))
	const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/traced", nil)
	req.Header.Set("traceparent", "00-"+traceID+"-"+parent+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := m.outbound.Tracing.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans := exp.get()
	if len(spans) != 1 {
		t.Fatalf("%d spans exported, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanContext().TraceID().String() != traceID || s.Parent().SpanID().String() != parent || s.SpanKind() != trace.SpanKindClient {
		t.Errorf("span %v of trace %v, parent %v, kind %v; want a client span of the app's trace under its span",
			s.SpanContext().SpanID(), s.SpanContext().TraceID(), s.Parent().SpanID(), s.SpanKind())
	}
	if want := "00-" + traceID + "-" + s.SpanContext().SpanID().String() + "-01"; string(got) != want {
		t.Errorf("the app got traceparent %q, want %q (the proxy's span as parent)", got, want)
	}
	if !strings.Contains(log.String(), `"trace_id":"`+traceID+`"`) {
		t.Errorf("access log %s names no trace %s", log.String(), traceID)
	}
}

// keptSpans is a span exporter that keeps what it is given, past Shutdown.
type keptSpans struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

func (k *keptSpans) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.spans = append(k.spans, spans...)
	return nil
}

func (k *keptSpans) Shutdown(context.Context) error { return nil }

func (k *keptSpans) get() []sdktrace.ReadOnlySpan {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.spans
}

// dialApp opens a connection to the outbound listener as an app would,
// closed when t ends, with 30 s to do its work.
func dialApp(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

// Kept-alive app connections that wait for their next request hold no
// goroutine (the idle poller waits for them), and still serve that
// request, time out when idle too long, and close at once in a drain.
func TestEngineIdleConnectionsHoldNoGoroutine(t *testing.T) {
	m := newTestMesh(t, 1)
	const n = 50
	request := func(c net.Conn, br *bufio.Reader) error {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: alpha.db\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		br := bufio.NewReader(c)
		if err := request(c, br); err != nil {
			t.Fatal(err)
		}
		return c, br
	}
	dial() // the mesh connection and its goroutines exist before the count
	time.Sleep(4 * idleGrace)
	before := runtime.NumGoroutine()
	conns, readers := make([]net.Conn, n), make([]*bufio.Reader, n)
	for i := range n {
		conns[i], readers[i] = dial()
	}
	time.Sleep(4 * idleGrace)
	if grew := runtime.NumGoroutine() - before; grew > n/5 {
		t.Errorf("%d idle kept-alive connections hold %d goroutines", n, grew)
	}
	for i, c := range conns {
		if err := request(c, readers[i]); err != nil {
			t.Fatalf("the next request on an idle connection: %v", err)
		}
	}

	// The idle timeout holds while the poller waits.
	m.outServer.engineIdle.Store(int64(300 * time.Millisecond)) // read by connections accepted from now
	c, _ := dial()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("past the idle timeout: read %v, want EOF", err)
	}

	// A drain closes the waiting connections at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := m.outServer.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the drain took %v with only idle connections", d)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("an idle connection after the drain: read %v, want EOF", err)
		}
	}
}
