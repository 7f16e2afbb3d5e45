package proxy

// The inbound side of the engine (issue #18): another sidecar's HTTP/2
// connection (mutual TLS), or h2c from outside the mesh, served by an h2
// server Conn, whose budgets and HPACK limit are the flood guard. Each
// request is checked, authenticated and authorized on the connection's
// reader goroutine. One without a body for an HTTP/1.1 app is sent by the
// reader itself on a pooled app connection, whose goroutine writes the
// response back as frames (h2inapp.go); the others (gRPC, request bodies)
// are served by Inbound.ServeHTTP on a goroutine of their own, over the
// stream (streamWriter, streamBody). docs/architecture.md, "The request
// path's engine".

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// engineServerConfig configures the engine's server Conns: budgets b,
// and a flood from the client at from puts it in the penalty box.
func engineServerConfig(b h2.Budgets, writeIdle time.Duration, floods *penaltyBox, from net.Addr) h2.Config {
	return h2.Config{
		Budgets:          b,
		IdleTimeout:      5 * time.Minute, // as net/http's servers here
		WriteIdleTimeout: writeIdle,
		OnFlood: func(what string) {
			slog.Info("HTTP/2 flood: closing the connection", "from", from, "flood", what)
			floods.strike(from)
		},
	}
}

// h2In handles the stream events of one inbound HTTP/2 connection.
type h2In struct {
	in     *Inbound
	ctx    context.Context // every request's: the app port, the local address, the TLS state
	state  *tls.ConnectionState
	remote string
}

// serveH2 serves c, an HTTP/2 connection whose TLS (state; nil for h2c)
// is done, until it ends.
func (in *Inbound) serveH2(c net.Conn, state *tls.ConnectionState, port uint16) {
	from := c.RemoteAddr()
	in.floods.serveAfterPenalty(from)
	ctx := context.WithValue(context.Background(), appPortKey{}, port)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.LocalAddr())
	if state != nil {
		ctx = withConnTLS(ctx, state)
	}
	h := &h2In{in: in, ctx: ctx, state: state, remote: from.String()}
	conn := h2.NewServerConn(c, engineServerConfig(peerBudgets, in.WriteIdleTimeout, &in.floods, from), callerHandler{h.request})
	if !in.engineConns.add(conn) {
		c.Close() // draining
		return
	}
	defer in.engineConns.remove(conn)
	_ = conn.Run()
}

// caller is a stream's Value once its request is taken: it gets the
// stream's later events (on the caller connection's reader goroutine).
type caller interface {
	// fromCaller delivers request body bytes, or trailers (then p is
	// empty and end is true).
	fromCaller(s *h2.Stream, p []byte, end bool, trailers []h2.Field)
	// callerGone says the caller reset the stream, or its connection
	// ended.
	callerGone(err error)
}

// callerHandler hands a server Conn's new streams to request, and their
// later events to their Value.
type callerHandler struct {
	request func(s *h2.Stream, f *http2.MetaHeadersFrame, end bool)
}

func (h callerHandler) Headers(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	if s.Value == nil {
		h.request(s, f, end)
		return
	}
	fields := f.RegularFields()
	trailers := make([]h2.Field, len(fields))
	for i, hf := range fields {
		trailers[i] = h2.Field{Name: hf.Name, Value: hf.Value}
	}
	s.Value.(caller).fromCaller(s, nil, true, trailers)
}

func (callerHandler) Data(s *h2.Stream, p []byte, end bool) {
	if c, ok := s.Value.(caller); ok {
		c.fromCaller(s, p, end, nil)
		return
	}
	s.Consumed(len(p))
}

func (callerHandler) Closed(s *h2.Stream, err error) {
	if c, ok := s.Value.(caller); ok {
		c.callerGone(err)
	}
}

// request serves a stream's request with one of the engine's forwarders:
// gRPC is relayed to an h2c stream to the app, the rest written to a
// pooled HTTP/1.1 app connection.
func (h *h2In) request(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	r, err := newStreamRequest(h.ctx, f, end, h.remote, h.state)
	if err != nil {
		s.Reset(http2.ErrCodeProtocol)
		return
	}
	in := h.in
	rec := recorder{in.Metrics, in.AccessLog, in.Tracing}
	if protocolOf(r) == "grpc" {
		x := newRelay(s, end, true, rec, "destination")
		s.Value = x
		h.serveNative(s, r, end, &x.engineExchange, func(r *http.Request, ex *exchange, src telemetry.Peer, start time.Time) {
			x.admit(r, ex, src, *in.self.Load(), start)
			if err := x.open(in.appsH2, ex.upstream, requestFields(r)); err != nil {
				x.failUpstream("UF", "the app did not answer", err)
			}
		})
		return
	}
	x := newAppExchange(in, s, end, rec)
	s.Value = x
	h.serveNative(s, r, end, &x.engineExchange, x.forward)
}

// serveNative serves a request with one of the engine's forwarders, on
// the reader goroutine; a refusal is answered here.
func (h *h2In) serveNative(s *h2.Stream, r *http.Request, end bool, x *engineExchange, forward forwarder) {
	w := &streamWriter{s: s, onReader: true, resetAfter: !end}
	h.in.serve(w, r, forward)
	if !x.forwarded {
		w.finish()
	}
}

// newStreamRequest builds a request's net/http form from its header
// section, with ctx, from remote over TLS state (nil: h2c).
func newStreamRequest(ctx context.Context, f *http2.MetaHeadersFrame, end bool, remote string, state *tls.ConnectionState) (*http.Request, error) {
	method, path, authority := f.PseudoValue("method"), f.PseudoValue("path"), f.PseudoValue("authority")
	u := &url.URL{Host: authority} // CONNECT's: no path, refused by checkRequest
	if path != "" {
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, err
		}
	}
	fields := f.RegularFields()
	hdr := make(http.Header, len(fields))
	for _, hf := range fields {
		k := http.CanonicalHeaderKey(hf.Name)
		hdr[k] = append(hdr[k], hf.Value)
	}
	if c := hdr["Cookie"]; len(c) > 1 { // RFC 9113 8.2.3: split crumbs join again
		hdr["Cookie"] = []string{strings.Join(c, "; ")}
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	delete(hdr, "Host")
	r := &http.Request{Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr, Host: authority,
		RequestURI: path, RemoteAddr: remote, TLS: state, Body: http.NoBody}
	switch {
	case end:
	case hdr.Get("Content-Length") != "":
		r.ContentLength, _ = strconv.ParseInt(hdr.Get("Content-Length"), 10, 64) // checked by the Conn
	default:
		r.ContentLength = -1
	}
	return r.WithContext(ctx), nil
}

// bridged is a stream served by a net/http handler on a goroutine of
// its own (a request the engine does not forward itself).
type bridged struct {
	cancel context.CancelFunc
	body   *streamBody // nil: the request has none
}

// bridge serves the request r of stream s with h, on a goroutine of its
// own: its body (unless the caller ended the stream with the head) and
// response pass over the stream.
func bridge(s *h2.Stream, r *http.Request, end bool, h http.Handler) {
	ctx, cancel := context.WithCancel(r.Context())
	b := &bridged{cancel: cancel}
	if !end {
		b.body = &streamBody{s: s}
		b.body.more.L = &b.body.mu
		r.Body = b.body
	}
	s.Value = b
	go b.serve(h, s, r.WithContext(ctx))
}

func (b *bridged) fromCaller(s *h2.Stream, p []byte, end bool, _ []h2.Field) {
	if b.body == nil {
		s.Consumed(len(p))
		return
	}
	b.body.push(p, end) // request trailers: not passed on
}

func (b *bridged) callerGone(err error) {
	b.cancel()
	if b.body != nil {
		b.body.fail(err)
	}
}

func (b *bridged) serve(h http.Handler, s *h2.Stream, r *http.Request) {
	defer b.cancel()
	w := &streamWriter{s: s}
	defer func() {
		if p := recover(); p != nil { // counted by the handler; the stream cannot end well
			if err, ok := p.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
				slog.Error("HTTP/2 request handler panicked", "panic", p)
			}
			s.Reset(http2.ErrCodeInternal)
			return
		}
		w.finish()
		if b.body != nil && !b.body.ended() {
			s.Reset(http2.ErrCodeNo) // the answer is out: the rest of the body is not wanted
		}
	}()
	h.ServeHTTP(w, r)
}

// streamWriter is an http.ResponseWriter that answers on a stream. The
// head goes out with the first body bytes, a Flush, or the end; trailers
// are the fields the Trailer header announced, and those named with
// http.TrailerPrefix, as net/http's servers take them. onReader: it is
// written on the connection's reader goroutine, which must not wait for
// send window, so the body is held until finish and sent by a goroutine.
type streamWriter struct {
	s        *h2.Stream
	onReader bool
	// resetAfter: the request's body is still coming; once the answer
	// is out, RST_STREAM (NO_ERROR) tells the caller to stop sending it.
	resetAfter bool
	header     http.Header
	code       int    // the final status; 0 until WriteHeader
	sent       bool   // the head went out
	held       []byte // onReader: the body, until finish
	err        error
}

func (w *streamWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *streamWriter) WriteHeader(code int) {
	if w.code != 0 || code < 100 || code > 999 {
		return
	}
	if code < 200 {
		if code != http.StatusSwitchingProtocols { // no 101 in HTTP/2
			_ = w.s.WriteHeaders(false, responseFields(code, w.header)...)
		}
		return
	}
	w.code = code
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.onReader {
		w.held = append(w.held, p...)
		return len(p), nil
	}
	w.sendHead(false)
	if w.err == nil {
		w.err = w.s.WriteData(p, false)
	}
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush sends the head if it has not gone out; frames leave as they are
// queued.
func (w *streamWriter) Flush() {
	w.WriteHeader(http.StatusOK)
	if !w.onReader {
		w.sendHead(false)
	}
}

func (w *streamWriter) sendHead(end bool) {
	if w.sent || w.err != nil {
		return
	}
	w.sent = true
	w.err = w.s.WriteHeaders(end, responseFields(w.code, w.header)...)
}

// finish ends the response: its head if still held, its body, its
// trailers.
func (w *streamWriter) finish() {
	w.WriteHeader(http.StatusOK)
	trailers := w.trailers()
	if len(w.held) == 0 && len(trailers) == 0 {
		if !w.sent {
			w.sendHead(true)
		} else if w.err == nil {
			w.err = w.s.WriteData(nil, true)
		}
		w.ended()
		return
	}
	w.sendHead(false)
	if w.err != nil {
		return
	}
	end := func() {
		if len(w.held) > 0 {
			w.err = w.s.WriteData(w.held, len(trailers) == 0)
		}
		if len(trailers) > 0 && w.err == nil {
			w.err = w.s.WriteHeaders(true, trailers...)
		}
		w.ended()
	}
	if w.onReader && len(w.held) > 0 {
		go end()
		return
	}
	end()
}

// ended resets the stream once the answer is out, if resetAfter.
func (w *streamWriter) ended() {
	if w.resetAfter && w.err == nil {
		w.s.Reset(http2.ErrCodeNo)
	}
}

// trailers are the response's trailer fields.
func (w *streamWriter) trailers() []h2.Field {
	var out []h2.Field
	for _, names := range w.header["Trailer"] {
		for name := range strings.SplitSeq(names, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			for _, v := range w.header[name] {
				out = append(out, h2.Field{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	for k, vs := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vs {
				out = append(out, h2.Field{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	return out
}

// responseFields are a response head's fields: the status, then the
// header's fields but for hop-by-hop ones and trailers.
func responseFields(code int, header http.Header) []h2.Field {
	fields := make([]h2.Field, 1, 1+len(header))
	fields[0] = h2.Field{Name: ":status", Value: strconv.Itoa(code)}
	announced := header["Trailer"]
	for k, vs := range header {
		name := strings.ToLower(k)
		if hopByHopField(name) || name == "trailer" || strings.HasPrefix(k, http.TrailerPrefix) || announces(announced, k) {
			continue
		}
		for _, v := range vs {
			fields = append(fields, h2.Field{Name: name, Value: v})
		}
	}
	return fields
}

// announces reports whether a Trailer header's values name field k.
func announces(trailer []string, k string) bool {
	for _, names := range trailer {
		for name := range strings.SplitSeq(names, ",") {
			if strings.EqualFold(strings.TrimSpace(name), k) {
				return true
			}
		}
	}
	return false
}

// streamBody is a bridged request's body: the reader goroutine pushes
// what arrives, the handler reads it, and the window of what it read goes
// back to the peer (so flow control bounds what is held).
type streamBody struct {
	s      *h2.Stream
	mu     sync.Mutex
	more   sync.Cond
	buf    []byte
	done   bool  // the peer ended the body
	err    error // why it ended early
	closed bool  // the handler is done with it
}

func (b *streamBody) push(p []byte, end bool) {
	b.mu.Lock()
	if b.closed {
		b.done = b.done || end
		b.mu.Unlock()
		b.s.Consumed(len(p))
		return
	}
	b.buf = append(b.buf, p...)
	b.done = b.done || end
	b.mu.Unlock()
	b.more.Signal()
}

func (b *streamBody) fail(err error) {
	b.mu.Lock()
	if !b.done && b.err == nil {
		b.err = errors.Join(io.ErrUnexpectedEOF, err)
	}
	b.mu.Unlock()
	b.more.Broadcast()
}

func (b *streamBody) ended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}

func (b *streamBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) == 0 && !b.done && b.err == nil && !b.closed {
		b.more.Wait()
	}
	if len(b.buf) > 0 && !b.closed {
		n := copy(p, b.buf)
		b.buf = b.buf[n:]
		b.mu.Unlock()
		b.s.Consumed(n)
		return n, nil
	}
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, http.ErrBodyReadAfterClose
	case b.err != nil:
		return 0, b.err
	}
	return 0, io.EOF
}

func (b *streamBody) Close() error {
	b.mu.Lock()
	b.closed = true
	n := len(b.buf)
	b.buf = nil
	b.mu.Unlock()
	b.more.Broadcast()
	if n > 0 {
		b.s.Consumed(n)
	}
	return nil
}

var (
	_ caller = (*bridged)(nil)
	_ caller = (*appExchange)(nil)
	_ caller = (*relay)(nil)
)
