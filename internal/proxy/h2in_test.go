package proxy

// The inbound side of the engine against an HTTP/1.1 app that answers
// from a script over a real socket: what the engine must relay (interim
// answers, chunked bodies with trailers, bodies until close), what it must
// not (the connection's own fields), and what it must survive (an app
// that closes a kept-alive connection, a caller that gives up).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// scriptedApp is an HTTP/1.1 app on loopback: each request it reads is
// answered by answer, which writes the raw response and says whether the
// connection stays open.
type scriptedApp struct {
	port     uint16
	conns    atomic.Int32
	requests chan *http.Request
	closed   chan struct{} // one token per connection that ended
}

func newScriptedApp(t *testing.T, answer func(r *http.Request, w io.Writer) bool) *scriptedApp {
	app := &scriptedApp{requests: make(chan *http.Request, 100), closed: make(chan struct{}, 100)}
	addr := serve(t, func(c net.Conn) {
		defer func() { app.closed <- struct{}{} }()
		defer c.Close()
		app.conns.Add(1)
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			app.requests <- r
			if !answer(r, c) {
				return
			}
		}
	})
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	app.port = uint16(n)
	return app
}

// meshTLSTo starts an inbound proxy in front of the app on appPort and
// returns it with the TLS config of a mesh identity that may call it
// ("h2"), and its address.
func meshTLSTo(t *testing.T, appPort uint16) (*Inbound, *tls.Config, string) {
	t.Helper()
	a, err := ca.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	client, _ := store(t, a, "spiffe://cluster.local/ns/web/sa/default")
	srv, serverID := store(t, a, "spiffe://cluster.local/ns/db/sa/alpha")
	in := NewInbound(srv, "cluster.local")
	in.Metrics = telemetry.New("test")
	t.Cleanup(func() { in.Close() })
	addr := serve(t, func(c net.Conn) { in.HandleConn(c, appPort) })
	cfg := meshtls.ClientConfig(client, meshtls.Exactly(serverID))
	cfg.NextProtos = []string{"h2"}
	return in, cfg, addr
}

// meshClientTo is meshTLSTo with an HTTP/2 client and the URL it reaches
// the proxy at.
func meshClientTo(t *testing.T, appPort uint16) (*Inbound, *http.Client, string) {
	t.Helper()
	in, cfg, addr := meshTLSTo(t, appPort)
	h2only := new(http.Protocols)
	h2only.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: cfg, Protocols: h2only}
	t.Cleanup(tr.CloseIdleConnections)
	return in, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://" + addr
}

func TestInboundEngineRelaysHTTP1Responses(t *testing.T) {
	var drops atomic.Int32
	app := newScriptedApp(t, func(r *http.Request, w io.Writer) bool {
		switch r.URL.Path {
		case "/chunked":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
				"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")
		case "/until-close":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
			return false
		case "/hints":
			io.WriteString(w, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"+
				"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		case "/private":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: secret\r\nX-Public: yes\r\nContent-Length: 0\r\n\r\n")
		case "/head":
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
		case "/once":
			// The second request on a kept-alive connection finds it
			// closed without an answer (the app's idle timeout ran out
			// as it was sent): the proxy must send it again on a new
			// connection, unseen by the caller.
			if drops.Add(1) == 2 {
				return false
			}
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce")
		default:
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nalpha")
		}
		return true
	})
	_, client, url := meshClientTo(t, app.port)
	get := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: body: %v", method, path, err)
		}
		return resp, string(body)
	}

	for i := range 5 {
		if _, body := get("GET", "/"); body != "alpha" {
			t.Fatalf("request %d: %q", i, body)
		}
	}
	if n := app.conns.Load(); n != 1 {
		t.Errorf("5 requests one after another took %d app connections, want 1 kept alive", n)
	}
	r := <-app.requests
	if r.Header.Get(xfccHeader) == "" || r.Header.Get(peerHeader) != "" || r.Host != strings.TrimPrefix(url, "https://") {
		t.Errorf("the app got Host %q, XFCC %q, peer header %q", r.Host, r.Header.Get(xfccHeader), r.Header.Get(peerHeader))
	}
	for range 4 {
		<-app.requests
	}

	resp, body := get("GET", "/chunked")
	if body != "hello world" || resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("chunked: %q, trailers %v; want the body and X-Sum: 42", body, resp.Trailer)
	}
	if _, body := get("GET", "/until-close"); body != "until close" {
		t.Errorf("a body until close: %q", body)
	}
	var interim []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, _ textproto.MIMEHeader) error { interim = append(interim, code); return nil }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url+"/hints", nil)
	if resp, err := client.Do(req); err != nil {
		t.Errorf("hints: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" || len(interim) != 1 || interim[0] != 103 {
			t.Errorf("hints: %q after interim answers %v, want ok after [103]", b, interim)
		}
	}
	if resp, _ := get("GET", "/private"); resp.Header.Get("X-Private") != "" || resp.Header.Get("X-Public") != "yes" {
		t.Errorf("a field the app's Connection names reached the caller: %v", resp.Header)
	}
	if resp, body := get("HEAD", "/head"); resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	for i := range 2 {
		if resp, body := get("GET", "/once"); resp.StatusCode != 200 || body != "once" {
			t.Errorf("after the app closed a kept-alive connection, request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if _, body := get("POST", "/"); body != "alpha" {
		t.Errorf("POST without a body: %q", body)
	}
	for len(app.requests) > 1 {
		<-app.requests
	}
	if r := <-app.requests; r.Method != "POST" || r.ContentLength != 0 || r.Header.Get("Content-Length") != "0" {
		t.Errorf("the app got %s with Content-Length %q", r.Method, r.Header.Get("Content-Length"))
	}
}

// A caller that gives up mid-response cuts the app's connection off (the
// app sees it close) and is recorded as Envoy records it: DC, code 0 if
// no response had started. An app that is not there is the proxy's 503 UF.
func TestInboundEngineCallerGoneAndAppDown(t *testing.T) {
	app := newScriptedApp(t, func(r *http.Request, w io.Writer) bool {
		// No answer: wait for the proxy to close the connection.
		w.(net.Conn).SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = w.(net.Conn).Read(make([]byte, 1))
		return false
	})
	in, client, url := meshClientTo(t, app.port)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/slow", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-app.requests
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cancelled request succeeded")
	}
	select {
	case <-app.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection stayed open after the caller gave up")
	}
	if n := scrapeWait(t, in.Metrics, "istio_requests_total", []string{`response_code="0"`, `response_flags="DC"`}, 1); n != 1 {
		t.Errorf("istio_requests_total{response_code=0,response_flags=DC} = %v, want 1", n)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	in2, client2, url2 := meshClientTo(t, down)
	resp, err := client2.Get(url2 + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get(flagsHeader) != "UF" {
		t.Errorf("no app: %d flags %q, want 503 UF", resp.StatusCode, resp.Header.Get(flagsHeader))
	}
	// The caller may be anyone: it is not told the app's address.
	if string(body) != "trellis proxy: the app did not answer\n" {
		t.Errorf("no app: the caller is told %q, want only that the app did not answer", body)
	}
	if n := scrapeWait(t, in2.Metrics, "istio_requests_total", []string{`response_code="503"`, `response_flags="UF"`}, 1); n != 1 {
		t.Errorf("istio_requests_total{response_code=503,response_flags=UF} = %v, want 1", n)
	}
}

// statusHeads is a client-role handler that passes on each response's
// status and takes whatever body comes.
type statusHeads chan string

func (h statusHeads) Headers(_ *h2.Stream, f *http2.MetaHeadersFrame, _ bool) {
	if st := f.PseudoValue("status"); st != "" {
		h <- st
	}
}
func (statusHeads) Data(s *h2.Stream, p []byte, _ bool) { s.Consumed(len(p)) }
func (statusHeads) Closed(*h2.Stream, error)            {}

// A request refused because the app is down gives back the connection
// window its body takes, however much of it comes, as a caller's sidecar
// sends it (the whole body, no reset): 40 POSTs of 200 KiB, twice the
// connection's window, each answered 503, none stalled.
func TestInboundEngineFailedUploadsReturnTheWindow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	_, cfg, addr := meshTLSTo(t, down)
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	heads := make(statusHeads, 1)
	c := h2.NewClientConn(tc, h2.Config{}, heads)
	go c.Run()
	<-c.Settled()
	body := bytes.Repeat([]byte("x"), 200<<10)
	for i := range 40 {
		s, err := c.NewStream(nil, false, false, h2.Field{Name: ":method", Value: "POST"}, h2.Field{Name: ":scheme", Value: "https"},
			h2.Field{Name: ":authority", Value: "alpha.db"}, h2.Field{Name: ":path", Value: "/"},
			h2.Field{Name: "content-length", Value: strconv.Itoa(len(body))})
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		sent := make(chan error, 1)
		go func() { sent <- s.WriteData(body, true) }()
		select {
		case err := <-sent:
			if err != nil {
				t.Fatalf("POST %d: its body: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("POST %d: its body stalled after %d KiB sent: the refused bodies kept the connection's window", i, i*len(body)>>10)
		}
		select {
		case st := <-heads:
			if st != "503" {
				t.Fatalf("POST %d to an app that is down: %s, want 503", i, st)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("POST %d: no answer", i)
		}
	}
}

// HTTP/2 carries a request's method and target as fields, which may hold
// spaces; they never reach an HTTP/1.1 app's request line, where the app
// would read a target other than the one policies matched.
func TestInboundEngineRefusesWhatARequestLineCannotCarry(t *testing.T) {
	app := newScriptedApp(t, func(r *http.Request, w io.Writer) bool {
		io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	_, cfg, addr := meshTLSTo(t, app.port)
	for _, c := range []struct{ method, path string }{
		{"GET", "/public?a HTTP/1.1"},
		{"GET /admin", "/public"},
		{"GET", "/ok"}, // the control: answered by the app
	} {
		tc, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		conn := h2.NewClientConn(tc, h2.Config{}, statusOnly(got))
		go conn.Run()
		if _, err := conn.NewStream(nil, false, true, h2.Field{Name: ":method", Value: c.method}, h2.Field{Name: ":scheme", Value: "https"},
			h2.Field{Name: ":authority", Value: "alpha.db"}, h2.Field{Name: ":path", Value: c.path}); err != nil {
			t.Fatal(err)
		}
		select {
		case status := <-got:
			want := "400"
			if c.path == "/ok" {
				want = "200"
			}
			if status != want {
				t.Errorf("%q %q: %s, want %s", c.method, c.path, status, want)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%q %q: no answer", c.method, c.path)
		}
		conn.Close()
	}
	if n := len(app.requests); n != 1 {
		t.Errorf("the app got %d requests, want only the control", n)
	}
}

// statusOnly is an h2 client handler that reports each response's status.
type statusOnly chan string

func (s statusOnly) Headers(st *h2.Stream, f *http2.MetaHeadersFrame, _ bool) {
	if v := f.PseudoValue("status"); v != "" {
		s <- v
	}
}
func (statusOnly) Data(st *h2.Stream, p []byte, _ bool) { st.Consumed(len(p)) }
func (statusOnly) Closed(*h2.Stream, error)             {}

// A peer's metadata is decoded once per connection while it stays the
// same, but a change on the same connection (the client's one HTTP/2
// connection) is seen at once, and a claim
// the certificate contradicts is refused (and counted) each time.
func TestInboundPeerMetadataPerRequest(t *testing.T) {
	app := newScriptedApp(t, func(r *http.Request, w io.Writer) bool {
		io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	in, client, url := meshClientTo(t, app.port)
	before := peerMismatches.Load()
	for _, meta := range []string{"workload=a&namespace=web", "workload=a&namespace=web", "workload=b&namespace=web",
		"workload=forged&namespace=db", "workload=forged&namespace=db", "workload=a&namespace=web"} {
		req, _ := http.NewRequest("GET", url+"/", nil)
		req.Header.Set(peerHeader, meta)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		<-app.requests
	}
	for workload, want := range map[string]float64{"a": 3, "b": 1, "forged": 0, "unknown": 2} {
		if n := scrape(t, in.Metrics, "istio_requests_total", []string{`source_workload="` + workload + `"`}); n != want {
			t.Errorf("requests from source_workload %q: %v, want %v", workload, n, want)
		}
	}
	if n := peerMismatches.Load() - before; n != 2 {
		t.Errorf("mismatched claims counted: %d, want 2", n)
	}
}

// Request bodies reach an HTTP/1.1 app on the engine: with a length or
// chunked (with the trailers it declared, but never an XFCC), over the stream's window, to an app that reads
// slowly, one after another on one kept-alive app connection. An app
// that answers before the body is in gets its answer through, and the
// caller is told to stop sending; the caller's connection window is
// whole after all of it.
func TestInboundEngineRequestBodies(t *testing.T) {
	app := newScriptedApp(t, func(r *http.Request, w io.Writer) bool {
		if r.URL.Path == "/early" { // refuse without reading the body
			io.WriteString(w, "HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			return false
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, slowReader{r.Body}, make([]byte, 64<<10))
		if err != nil {
			return false
		}
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Len: %d\r\nX-Sum: %x\r\nX-Chunked: %v\r\nX-Trailer: %s\r\nX-Xfcc-Trailer: %s\r\n\r\n",
			n, h.Sum(nil)[:8], len(r.TransferEncoding) > 0, r.Trailer.Get("X-Trailer"), r.Trailer.Get(xfccHeader))
		return true
	})
	_, client, url := meshClientTo(t, app.port)
	body := make([]byte, 3<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	post := func(path string, chunked bool, trailer string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", url+path, bytes.NewReader(body))
		if chunked {
			req.Body = io.NopCloser(bytes.NewReader(body))
			req.ContentLength = -1
		}
		if trailer != "" { // and a forged XFCC the app must not get
			req.Trailer = http.Header{"X-Trailer": {trailer}, xfccHeader: {"By=spiffe://forged"}}
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i, c := range []struct {
		chunked bool
		trailer string
	}{{false, ""}, {true, "t1"}, {false, ""}, {true, ""}} {
		resp := post("/", c.chunked, c.trailer)
		if resp.StatusCode != 200 || resp.Header.Get("X-Len") != strconv.Itoa(len(body)) || resp.Header.Get("X-Sum") != fmt.Sprintf("%x", sum[:8]) {
			t.Fatalf("upload %d: %d, length %s, sum %s", i, resp.StatusCode, resp.Header.Get("X-Len"), resp.Header.Get("X-Sum"))
		}
		if got := resp.Header.Get("X-Chunked"); got != strconv.FormatBool(c.chunked) || resp.Header.Get("X-Trailer") != c.trailer {
			t.Errorf("upload %d: the app read chunked %s with trailer %q, want %v and %q", i, got, resp.Header.Get("X-Trailer"), c.chunked, c.trailer)
		}
		if xfcc := resp.Header.Get("X-Xfcc-Trailer"); xfcc != "" {
			t.Errorf("upload %d: the app got a caller's XFCC trailer %q", i, xfcc)
		}
		<-app.requests
	}
	if n := app.conns.Load(); n != 1 {
		t.Errorf("4 uploads one after another took %d app connections, want 1 kept alive", n)
	}
	for range 3 {
		if resp := post("/early", true, ""); resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("an answer before the body is in: %d, want 413", resp.StatusCode)
		}
		<-app.requests
	}
	// The connection window (4 MiB) is whole: what the early answers
	// left unsent was given back.
	body = make([]byte, 6<<20)
	sum = sha256.Sum256(body)
	if resp := post("/", false, ""); resp.StatusCode != 200 || resp.Header.Get("X-Sum") != fmt.Sprintf("%x", sum[:8]) {
		t.Fatalf("an upload after the early answers: %d, sum %s", resp.StatusCode, resp.Header.Get("X-Sum"))
	}
}

// slowReader reads as an app busy with each piece does.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return s.r.Read(p)
}
