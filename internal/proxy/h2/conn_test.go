package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/h2spectest"
)

// echoServer serves HTTP/2 connections with Conns whose handler answers
// every request 200 with its body (or "hello h2" when it has none), from a
// goroutine per request, as a test stand-in for an app connection. It
// consumes request bodies as they arrive.
func echoServer(t *testing.T, cfg Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conn := NewServerConn(c, cfg, echoHandler{})
			wg.Go(func() { conn.Run() })
			t.Cleanup(func() { conn.Close() })
		}
	})
	return ln.Addr().String()
}

type echoHandler struct{}

type echoStream struct {
	stall    bool // /stall: the body is never consumed, no answer is given
	mu       sync.Mutex
	body     []byte
	trailers []Field
}

func (echoHandler) Headers(s *Stream, f *http2.MetaHeadersFrame, end bool) {
	if s.Value == nil {
		s.Value = &echoStream{stall: f.PseudoValue("path") == "/stall"}
	} else {
		st := s.Value.(*echoStream)
		for _, hf := range f.RegularFields() {
			st.trailers = append(st.trailers, Field{"echo-" + hf.Name, hf.Value})
		}
	}
	if end {
		go respond(s)
	}
}

func (echoHandler) Data(s *Stream, p []byte, end bool) {
	st := s.Value.(*echoStream)
	if st.stall {
		return
	}
	st.mu.Lock()
	st.body = append(st.body, p...)
	st.mu.Unlock()
	s.Consumed(len(p))
	if end {
		go respond(s)
	}
}

func (echoHandler) Closed(*Stream, error) {}

func respond(s *Stream) {
	st := s.Value.(*echoStream)
	st.mu.Lock()
	body, trailers := st.body, st.trailers
	st.mu.Unlock()
	if len(body) == 0 {
		body = []byte("hello h2")
	}
	if s.WriteHeaders(false, Field{":status", "200"}) != nil {
		return
	}
	if len(trailers) == 0 {
		s.WriteData(body, true)
		return
	}
	if s.WriteData(body, false) == nil {
		s.WriteHeaders(true, trailers...)
	}
}

// h2cClient is net/http's HTTP/2 client speaking h2c with prior
// knowledge.
func h2cClient() *http.Client {
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Protocols: h2c}}
}

// net/http's client against the server role: many concurrent streams on
// one connection, bodies larger than every window, trailers both ways.
func TestServerConnWithNetHTTPClient(t *testing.T) {
	addr := echoServer(t, Config{StreamWindow: 64 << 10, ConnWindow: 128 << 10})
	client := h2cClient()
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			body := make([]byte, 1000*i)
			rand.Read(body)
			resp, err := client.Post("http://"+addr+"/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			want := body
			if len(body) == 0 {
				want = []byte("hello h2")
			}
			if err != nil || !bytes.Equal(got, want) || resp.ProtoMajor != 2 {
				t.Errorf("request %d: %s, %d bytes, %v; want HTTP/2 and the %d bytes sent", i, resp.Proto, len(got), err, len(want))
			}
		})
	}
	wg.Wait()

	// 16 MiB each way through 64 KiB stream windows.
	big := make([]byte, 16<<20)
	rand.Read(big)
	resp, err := client.Post("http://"+addr+"/big", "application/octet-stream", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if want := sha256.Sum256(big); err != nil || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("16 MiB echo: %d bytes back, %v; want the same bytes", n, err)
	}

	// Request trailers come back as response trailers.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/trailers", pr)
	req.Trailer = http.Header{"Grpc-Status": nil}
	go func() {
		pw.Write([]byte("body"))
		req.Trailer.Set("Grpc-Status", "7")
		pw.Close()
	}()
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "body" || resp.Trailer.Get("Echo-Grpc-Status") != "7" {
		t.Errorf("trailers: body %q, trailer %q; want %q and %q", got, resp.Trailer.Get("Echo-Grpc-Status"), "body", "7")
	}
}

// A stream whose body is not taken (a slow app) stalls itself once its
// window is used, and no other stream of the connection.
func TestServerConnSlowStreamStallsOnlyItself(t *testing.T) {
	addr := echoServer(t, Config{StreamWindow: 64 << 10, ConnWindow: 1 << 20})
	client := h2cClient()
	stalled := make(chan error, 1)
	go func() {
		// More than the stream's window: the client waits for a
		// WINDOW_UPDATE that never comes, until the test ends.
		resp, err := client.Post("http://"+addr+"/stall", "application/octet-stream", bytes.NewReader(make([]byte, 256<<10)))
		if err == nil {
			resp.Body.Close()
		}
		stalled <- err
	}()
	for i := range 20 {
		body := bytes.Repeat([]byte{byte(i)}, 100<<10)
		resp, err := client.Post("http://"+addr+"/echo", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("request %d beside a stalled stream: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("request %d beside a stalled stream: %d bytes, %v", i, len(got), err)
		}
	}
	select {
	case err := <-stalled:
		t.Fatalf("the stalled request ended (%v): its window was returned though its body was not taken", err)
	default:
	}
}

// h2spec, the HTTP/2 conformance suite, against the server role: every
// case must pass.
func TestServerConnH2Spec(t *testing.T) {
	h2spectest.Run(t, echoServer(t, Config{}))
}

// collector is a client-role handler that gathers each stream's response.
type collector struct{}

type response struct {
	status   string
	fields   map[string]string
	body     bytes.Buffer
	trailers map[string]string
	err      error
	done     chan struct{}
}

func (collector) Headers(s *Stream, f *http2.MetaHeadersFrame, end bool) {
	r := s.Value.(*response)
	m := map[string]string{}
	for _, hf := range f.RegularFields() {
		m[hf.Name] = hf.Value
	}
	if r.status == "" || strings.HasPrefix(r.status, "1") {
		r.status, r.fields = f.PseudoValue("status"), m
	} else {
		r.trailers = m
	}
	if end {
		close(r.done)
	}
}

func (collector) Data(s *Stream, p []byte, end bool) {
	r := s.Value.(*response)
	r.body.Write(p)
	s.Consumed(len(p))
	if end {
		close(r.done)
	}
}

func (collector) Closed(s *Stream, err error) {
	r := s.Value.(*response)
	r.err = err
	close(r.done)
}

// The client role against net/http's HTTP/2 server: requests with bodies
// and trailers on many concurrent streams, and the server's stream limit.
func TestClientConnWithNetHTTPServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: h2c, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 20},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hold" {
				<-release
			}
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Trailer", "X-Sum")
			w.Header().Set("X-Method", r.Method)
			w.Write(body)
			sum := sha256.Sum256(body)
			w.Header().Set("X-Sum", fmt.Sprintf("%x", sum[:4]))
		})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := NewClientConn(c, Config{}, collector{})
	done := make(chan error, 1)
	go func() { done <- conn.Run() }()
	t.Cleanup(func() { conn.Close(); <-done })
	select {
	case <-conn.Settled():
	case <-time.After(10 * time.Second):
		t.Fatal("no SETTINGS from the server")
	}

	send := func(path string, body []byte) *response {
		r := &response{done: make(chan struct{})}
		fields := []Field{{":method", "POST"}, {":scheme", "http"}, {":authority", "app"}, {":path", path}}
		for {
			s, err := conn.NewStream(r, false, len(body) == 0, fields...)
			if errors.Is(err, ErrMaxStreams) {
				time.Sleep(time.Millisecond) // 20 at once: wait for one to end
				continue
			}
			if err != nil {
				t.Fatalf("NewStream: %v", err)
			}
			if len(body) > 0 {
				go s.WriteData(body, true)
			}
			return r
		}
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			body := make([]byte, 3000*i+1)
			rand.Read(body)
			r := send("/echo", body)
			<-r.done
			sum := sha256.Sum256(body)
			if r.err != nil || r.status != "200" || !bytes.Equal(r.body.Bytes(), body) || r.trailers["x-sum"] != fmt.Sprintf("%x", sum[:4]) {
				t.Errorf("stream %d: %v, status %q, %d bytes, trailers %v", i, r.err, r.status, r.body.Len(), r.trailers)
			}
		})
	}
	wg.Wait()

	// A stream reset by this side ends at the server, with no event for
	// the handler, and the connection goes on.
	cancelled := &response{done: make(chan struct{})}
	s, err := conn.NewStream(cancelled, false, false, Field{":method", "POST"}, Field{":scheme", "http"}, Field{":authority", "app"}, Field{":path", "/echo"})
	if err != nil {
		t.Fatal(err)
	}
	s.Reset(http2.ErrCodeCancel)
	if err := s.WriteData([]byte("late"), true); !errors.Is(err, ErrStreamClosed) {
		t.Errorf("WriteData after Reset: %v, want ErrStreamClosed", err)
	}
	if r := send("/echo", []byte("after")); func() bool { <-r.done; return r.status != "200" }() {
		t.Errorf("a stream after a reset one: %v, status %q", r.err, r.status)
	}
	select {
	case <-cancelled.done:
		t.Error("the handler heard of a stream this side reset")
	default:
	}

	// The server allows 20 streams at once: the 21st is refused here,
	// before it reaches the wire, until one ends.
	var held []*response
	for range 20 {
		held = append(held, send("/hold", nil))
	}
	if _, err := conn.NewStream(&response{done: make(chan struct{})}, false, true, Field{":method", "GET"}, Field{":scheme", "http"}, Field{":authority", "app"}, Field{":path", "/"}); !errors.Is(err, ErrMaxStreams) {
		t.Errorf("a 21st stream with 20 allowed: %v, want ErrMaxStreams", err)
	}
	close(release)
	for _, r := range held {
		<-r.done
		if r.err != nil || r.status != "200" {
			t.Errorf("held stream: %v, status %q", r.err, r.status)
		}
	}
}

// holdHandler answers every request once release is closed.
type holdHandler struct{ release chan struct{} }

func (h holdHandler) Headers(s *Stream, _ *http2.MetaHeadersFrame, end bool) {
	if end {
		go func() {
			<-h.release
			s.WriteHeaders(false, Field{":status", "200"})
			s.WriteData([]byte("done"), true)
		}()
	}
}
func (holdHandler) Data(*Stream, []byte, bool) {}
func (holdHandler) Closed(*Stream, error)      {}

// GoAway lets the streams in flight finish and then ends the connection;
// the client opens a new one for what comes next.
func TestServerConnGoAwayDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := holdHandler{release: make(chan struct{})}
	conns := make(chan *Conn, 4)
	ended := make(chan error, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conn := NewServerConn(c, Config{}, h)
			conns <- conn
			go func() { ended <- conn.Run() }()
		}
	}()
	client := h2cClient()
	result := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://" + ln.Addr().String() + "/held")
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- string(b)
	}()
	first := <-conns
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		first.mu.Lock()
		open := len(first.streams)
		first.mu.Unlock()
		if open == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the server")
		}
	}
	first.GoAway()
	if first.Open() {
		t.Error("Open() after GoAway, want false")
	}
	close(h.release)
	if got := <-result; got != "done" {
		t.Fatalf("the request in flight during GoAway got %q, want %q", got, "done")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end after its last stream")
	}
	// The next request opens a new connection.
	resp, err := client.Get("http://" + ln.Addr().String() + "/next")
	if err != nil {
		t.Fatalf("request after GoAway: %v", err)
	}
	resp.Body.Close()
	if len(conns) != 1 {
		t.Errorf("%d new connections after GoAway, want 1", len(conns))
	}
}

// A peer that grants no send window gets its stream reset once the write
// idle timeout passes: the writer waiting for window does not wait forever.
func TestStalledWindowResetsTheStream(t *testing.T) {
	addr := echoServer(t, Config{WriteIdleTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &holdingHandler{closed: make(chan error, 1)}
	cc := NewClientConn(c, Config{StreamWindow: 16 << 10}, h)
	go cc.Run()
	defer cc.Close()
	st, err := cc.NewStream(nil, false, false, Field{":method", "POST"}, Field{":scheme", "http"},
		Field{":authority", "echo"}, Field{":path", "/echo"})
	if err != nil {
		t.Fatal(err)
	}
	// The echo answers with the body: 64 KiB against a 16 KiB window
	// this side never returns.
	go st.WriteData(make([]byte, 64<<10), true)
	select {
	case err := <-h.closed:
		var se http2.StreamError
		if !errors.As(err, &se) || se.Code != http2.ErrCodeCancel {
			t.Errorf("the stream ended with %v, want a reset with CANCEL", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream is still open 10 s after its window stalled")
	}
}

// holdingHandler never consumes what it is sent.
type holdingHandler struct{ closed chan error }

func (*holdingHandler) Headers(*Stream, *http2.MetaHeadersFrame, bool) {}
func (*holdingHandler) Data(*Stream, []byte, bool)                     {}
func (h *holdingHandler) Closed(_ *Stream, err error)                  { h.closed <- err }

// IdleTimeout ends a connection that has had no stream for that long
// (the client's next request goes on a new one, and succeeds), never one
// with a stream open, however long the stream lasts.
func TestIdleTimeoutEndsOnlyIdleConnections(t *testing.T) {
	addr := echoServer(t, Config{IdleTimeout: 300 * time.Millisecond})
	var dials atomic.Int32
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Protocols: h2c,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		}}}
	post := func(body io.Reader) {
		t.Helper()
		resp, err := client.Post("http://"+addr+"/", "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// A stream open for three idle timeouts: its body comes slowly.
	pr, pw := io.Pipe()
	go func() {
		for range 6 {
			time.Sleep(150 * time.Millisecond)
			pw.Write([]byte("slow"))
		}
		pw.Close()
	}()
	post(pr)
	post(strings.NewReader("at once"))
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections for two requests in a row, want 1", n)
	}
	time.Sleep(time.Second)
	post(strings.NewReader("after an idle second"))
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections after an idle second, want 2 (the idle one ended)", n)
	}
}

// A response whose body is at hand leaves with its header section in one
// write; a body over the send window goes in part, the rest with
// WriteData as the window opens.
func TestWriteHeadersData(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rec := &recordingConn{}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		rec.Conn = c
		NewServerConn(rec, Config{}, headersDataHandler{}).Run()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := NewClientConn(c, Config{StreamWindow: 16 << 10}, collector{})
	go conn.Run()
	defer conn.Close()
	for _, size := range []int{1000, 40 << 10} {
		r := &response{done: make(chan struct{})}
		path := "/" + strconv.Itoa(size)
		if _, err := conn.NewStream(r, false, true, Field{":method", "GET"}, Field{":scheme", "http"},
			Field{":authority", "app"}, Field{":path", path}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("GET %s: no answer", path)
		}
		if r.status != "200" || r.fields["x-size"] != strconv.Itoa(size) || r.body.Len() != size || r.err != nil {
			t.Fatalf("GET %s: status %q, fields %v, %d bytes, %v", path, r.status, r.fields, r.body.Len(), r.err)
		}
	}
	// Stream 1's HEADERS and its one DATA frame, ending it, left together.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, w := range rec.writes {
		fr := http2.NewFramer(nil, bytes.NewReader(w))
		var types []http2.FrameType
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if f.Header().StreamID == 1 {
				types = append(types, f.Header().Type)
			}
		}
		if slices.Equal(types, []http2.FrameType{http2.FrameHeaders, http2.FrameData}) {
			return
		}
	}
	t.Errorf("no write held stream 1's HEADERS and DATA together (%d writes)", len(rec.writes))
}

// headersDataHandler answers GET /N with N bytes, sent with
// WriteHeadersData and then WriteData.
type headersDataHandler struct{}

func (headersDataHandler) Headers(s *Stream, f *http2.MetaHeadersFrame, _ bool) {
	size, _ := strconv.Atoi(strings.TrimPrefix(f.PseudoValue("path"), "/"))
	go func() {
		body := bytes.Repeat([]byte("x"), size)
		n, err := s.WriteHeadersData([]Field{{":status", "200"}, {"x-size", strconv.Itoa(size)}}, body, true)
		if err == nil {
			s.WriteData(body[n:], true)
		}
	}()
}
func (headersDataHandler) Data(*Stream, []byte, bool) {}
func (headersDataHandler) Closed(*Stream, error)      {}

// recordingConn keeps a copy of each write.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}
