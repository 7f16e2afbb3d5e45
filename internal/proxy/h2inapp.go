package proxy

// The engine's inbound requests to an HTTP/1.1 app: written by the mesh
// connection's reader goroutine on a pooled app connection, whose own
// goroutine reads the response and writes it back as frames.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/balancer"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// engineExchange is a request the engine forwards itself, as its
// forwarders share it: what is recorded when it ends, and who ends it.
type engineExchange struct {
	s         *h2.Stream // the caller's
	rec       recorder
	reporter  string // "destination" (inbound) or "source" (outbound)
	forwarded bool   // a forwarder took it (it was not refused)

	r          *http.Request
	ex         *exchange
	src, dst   telemetry.Peer
	start      time.Time
	done       func(balancer.Result) // the endpoint's result (outbound); nil inbound
	code       int                   // the upstream's status, set before started
	started    atomic.Bool           // the response head went out
	reqBytes   atomic.Int64          // body bytes relayed each way
	respBytes  atomic.Int64
	finished   atomic.Bool   // recorded
	grpc       bool          // gRPC: messages and status are recorded
	reqMsgs    *grpcMessages // fed on the caller's reader goroutine
	respMsgs   *grpcMessages // fed on the upstream's
	grpcStatus string        // set before the exchange is recorded
}

// admit records what is known of an admitted request.
func (x *engineExchange) admit(r *http.Request, ex *exchange, src, dst telemetry.Peer, start time.Time) {
	x.forwarded, x.r, x.ex, x.src, x.dst, x.start = true, r, ex, src, dst, start
}

// appExchange is a request for an HTTP/1.1 app: the stream's Value.
type appExchange struct {
	engineExchange
	in   *Inbound
	head []byte                  // the request head as the app gets it, for a second try
	app  atomic.Pointer[appConn] // the connection the request went on
	up   *upload                 // the request body's way to the app; nil without a body
}

// newAppExchange is the exchange of a request on s; end: it has no body.
func newAppExchange(in *Inbound, s *h2.Stream, end bool, rec recorder) *appExchange {
	x := &appExchange{engineExchange: engineExchange{s: s, rec: rec, reporter: "destination"}, in: in}
	if !end {
		x.up = &upload{s: s, idle: in.WriteIdleTimeout}
	}
	return x
}

// forward sends an admitted request to the app (a forwarder).
func (x *appExchange) forward(r *http.Request, ex *exchange, src telemetry.Peer, start time.Time) {
	x.admit(r, ex, src, *x.in.self.Load(), start)
	if x.up != nil {
		x.up.chunked = r.ContentLength < 0
		for _, v := range r.Header["Trailer"] {
			for name := range strings.SplitSeq(v, ",") {
				x.up.trailers = append(x.up.trailers, strings.ToLower(strings.TrimSpace(name)))
			}
		}
	}
	head, err := appendRequestHead(make([]byte, 0, requestHeadSize(r)), r, x.up != nil && x.up.chunked)
	if err != nil {
		x.fail(http.StatusBadRequest, "DPE", err.Error())
		return
	}
	x.head = head
	x.in.apps.send(ex.upstream, x, false)
}

// fail answers x with the proxy's own response and records it; its body,
// if any, is not sent (and the caller's window it holds comes back).
func (x *appExchange) fail(code int, flag, reason string) {
	x.up.abandonIfAny()
	x.engineExchange.fail(code, flag, reason)
}

// failUpstream is engineExchange.failUpstream with the body abandoned, as
// fail abandons it.
func (x *appExchange) failUpstream(flag, reason string, err error) {
	x.up.abandonIfAny()
	x.engineExchange.failUpstream(flag, reason, err)
}

// sent starts the body, if any, after the head went on c.
func (x *appExchange) sent(c net.Conn) {
	if x.up != nil {
		x.up.attach(c)
	}
}

// requestHeadSize is about the size of r's head in HTTP/1.1: room to build
// it in one allocation.
func requestHeadSize(r *http.Request) int {
	n := len(r.Method) + len(r.URL.Path) + len(r.URL.RawQuery) + len(r.Host) + 64
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// appendRequestHead is r's head in HTTP/1.1 for the app; chunked: its
// body, of no known length, goes chunked.
func appendRequestHead(b []byte, r *http.Request, chunked bool) ([]byte, error) {
	b = append(append(append(append(b, r.Method...), ' '), r.URL.RequestURI()...), " HTTP/1.1\r\nHost: "...)
	b = append(append(b, r.Host...), "\r\n"...)
	length := false
	for k, vs := range r.Header {
		if hopByHopHeader(k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, errors.New("header field name " + strconv.Quote(k) + " is not valid")
		}
		length = length || k == "Content-Length"
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, errors.New("header field " + k + " has a value that is not valid")
			}
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	switch {
	case chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case !length && (r.Method == "POST" || r.Method == "PUT" || r.Method == "PATCH"):
		b = append(b, "Content-Length: 0\r\n"...) // as net/http sends an empty body
	}
	return append(b, "\r\n"...), nil
}

func hopByHopHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te":
		return true
	}
	return false
}

// claim makes the caller the one that records the exchange.
func (x *engineExchange) claim() bool { return !x.finished.Swap(true) }

// fail answers the request with the proxy's own response and records it.
func (x *engineExchange) fail(code int, flag, reason string) {
	x.failSaying(code, flag, reason, reason)
}

// failSaying is fail with the reason the caller is told apart from the
// one recorded.
func (x *engineExchange) failSaying(code int, flag, recorded, said string) {
	if !x.claim() {
		return
	}
	x.ex.flags, x.ex.reason = flag, recorded
	x.recordClaimed(code)
	msg := []byte("trellis proxy: " + said + "\n")
	err := x.s.WriteHeaders(false, h2.Field{Name: ":status", Value: strconv.Itoa(code)},
		h2.Field{Name: "content-type", Value: "text/plain; charset=utf-8"}, h2.Field{Name: strings.ToLower(flagsHeader), Value: flag},
		h2.Field{Name: "content-length", Value: strconv.Itoa(len(msg))})
	if err == nil {
		go x.s.WriteData(msg, true) // not on the reader goroutine: it may wait for window
	}
}

// failUpstream answers a request its upstream (an endpoint, or the app)
// did not take or did not answer, for err: 503, or for a gRPC call a
// trailers-only UNAVAILABLE, recorded with HTTP 200 as on net/http's path
// (Outbound.fail). The endpoint's result is the failure either way. The
// record says why; so does the answer to the local app, but a caller from
// elsewhere (inbound) learns only reason, as from Inbound's ErrorHandler.
func (x *engineExchange) failUpstream(flag, reason string, err error) {
	recorded, said := reason+": "+err.Error(), reason
	if x.reporter == "source" {
		said = recorded
	}
	if !x.grpc {
		x.failSaying(http.StatusServiceUnavailable, flag, recorded, said)
		return
	}
	if !x.claim() {
		return
	}
	x.ex.flags, x.ex.reason = flag, recorded
	x.grpcStatus = strconv.Itoa(grpcUnavailable)
	x.recordClaimedAs(http.StatusOK, http.StatusServiceUnavailable)
	_ = x.s.WriteHeaders(true, grpcAnswer(grpcUnavailable, flag, said)...)
}

// answer ends the exchange with the proxy's own answer, a header section
// that ends the stream (fields, with its :status code), and records it.
func (x *engineExchange) answer(code int, flag, reason string, fields []h2.Field) {
	if !x.claim() {
		return
	}
	x.ex.flags, x.ex.reason = flag, reason
	x.recordClaimed(code)
	_ = x.s.WriteHeaders(true, fields...)
}

// fromCaller passes the request body on to the app; without one (or
// once the request is refused) what comes is dropped: only trailers can.
func (x *appExchange) fromCaller(s *h2.Stream, p []byte, end bool, trailers []h2.Field) {
	if x.up == nil || !x.forwarded {
		s.Consumed(len(p))
		return
	}
	x.reqBytes.Add(int64(len(p)))
	x.up.push(p, end, trailers)
}

// callerGone records a request whose caller reset the stream and cuts off
// the app connection serving it.
func (x *appExchange) callerGone(error) {
	if !x.forwarded {
		return // refused: recorded already
	}
	claimed := x.claim()
	x.up.abandonIfAny()
	if c := x.app.Load(); c != nil && c.cur.Load() == x {
		c.conn.Close()
	}
	if claimed {
		x.recordGone()
	}
}

// recordGone records a claimed exchange whose caller went away: DC, code
// 0 if no response had started.
func (x *engineExchange) recordGone() {
	code := 0
	if x.started.Load() {
		code = x.code
	}
	x.ex.flags = "DC"
	x.recordClaimed(code)
}

// record records the exchange's end, once, before its last frame goes
// out: a caller that has its answer finds it counted.
func (x *engineExchange) record() {
	if x.claim() {
		x.recordClaimed(x.code)
	}
}

func (x *engineExchange) recordClaimed(code int) { x.recordClaimedAs(code, code) }

// recordClaimedAs records the exchange as answered with code, and the
// endpoint's result, if it had one, as endpoint.
func (x *engineExchange) recordClaimedAs(code, endpoint int) {
	r, ex := x.r, x.ex
	d := time.Since(x.start)
	if x.done != nil {
		res := balancer.HTTPResult(endpoint, endpoint == 0 || ex.flags == "UC", d)
		res.Abandoned = ex.flags == "DC" // the caller gave up: nothing of the endpoint
		x.done(res)
	}
	req := telemetry.Request{Reporter: x.reporter, Source: x.src, Dest: x.dst,
		Service: ex.service, ServiceName: ex.svcName, ServiceNamespace: ex.svcNS,
		Protocol: "http", Code: code, MutualTLS: ex.mutualTLS, Flags: ex.flags, Duration: d,
		RequestBytes: x.reqBytes.Load(), ResponseBytes: x.respBytes.Load(), Method: r.Method, Path: r.URL.Path}
	if x.grpc {
		req.Protocol, req.GRPCStatus = "grpc", x.grpcStatus
		req.RequestMessages, req.ResponseMessages = x.reqMsgs.count(), x.respMsgs.count()
	}
	x.rec.record(requestLine{r.Method, r.Host, r.URL.Path, r.Proto}, ex, req)
}

// appPool holds kept-alive HTTP/1.1 connections to the app, by address.
type appPool struct {
	mu   sync.Mutex
	idle map[string][]*appConn
}

// appConn is one connection to the app. Its goroutine reads the response
// to each request written on it and writes it to the request's stream;
// between requests it waits, without a read buffer, for the app to close
// it.
type appConn struct {
	pool  *appPool
	addr  string
	conn  net.Conn
	cur   atomic.Pointer[appExchange] // nil: idle; deadExchange: closed
	fresh bool                        // no response was read on it yet
	kept  bool                        // the last response released it
	readBuf
	resp h1.Response
}

// deadExchange marks an app connection that serves no more requests.
var deadExchange = &appExchange{}

const (
	appDialTimeout = 5 * time.Second
	appHeadTimeout = 15 * time.Second // the wait for a response head
	appIdleTimeout = time.Minute
	appMaxIdle     = 64
)

// send writes x's request on an idle connection to addr, or on a new
// one; fresh: only on a new one (a kept-alive one failed it).
func (p *appPool) send(addr string, x *appExchange, fresh bool) {
	for !fresh {
		c := p.takeIdle(addr)
		if c == nil {
			break
		}
		if !c.cur.CompareAndSwap(nil, x) {
			continue // it ended meanwhile
		}
		x.app.Store(c)
		c.conn.SetWriteDeadline(time.Now().Add(appDialTimeout))
		_, err := c.conn.Write(x.head)
		c.conn.SetWriteDeadline(time.Time{})
		if err != nil {
			c.conn.Close() // its goroutine sends x again, or fails it
			return
		}
		x.sent(c.conn)
		return
	}
	c := &appConn{pool: p, addr: addr, fresh: true}
	c.cur.Store(x)
	go c.dialAndServe()
}

func (p *appPool) takeIdle(addr string) *appConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[addr]
	if len(list) == 0 {
		return nil
	}
	c := list[len(list)-1]
	p.idle[addr] = list[:len(list)-1]
	return c
}

// putIdle keeps c for the next request; false if there are enough.
func (p *appPool) putIdle(c *appConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle[c.addr]) >= appMaxIdle {
		return false
	}
	if p.idle == nil {
		p.idle = map[string][]*appConn{}
	}
	p.idle[c.addr] = append(p.idle[c.addr], c)
	return true
}

func (p *appPool) drop(c *appConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[c.addr]
	for i, o := range list {
		if o == c {
			p.idle[c.addr] = append(list[:i], list[i+1:]...)
			return
		}
	}
}

// closeIdle closes the idle connections.
func (p *appPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.idle {
		for _, c := range list {
			c.conn.Close()
		}
	}
}

func (c *appConn) dialAndServe() {
	x := c.cur.Load()
	conn, err := connectAppRaw(x.r.Context(), "tcp", c.addr)
	if err != nil {
		x.failUpstream("UF", "the app did not answer", err)
		return
	}
	c.conn = conn
	x.app.Store(c)         // before the check: gone closes it, or this sees gone
	if x.finished.Load() { // the caller left meanwhile
		conn.Close()
		return
	}
	c.conn.SetWriteDeadline(time.Now().Add(appDialTimeout))
	_, err = c.conn.Write(x.head)
	c.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		c.conn.Close()
		x.failUpstream("UF", "the app did not answer", err)
		return
	}
	x.sent(c.conn)
	c.serve()
}

// serve reads responses until the connection ends.
func (c *appConn) serve() {
	defer func() {
		c.conn.Close()
		c.drop()
	}()
	for {
		x := c.cur.Load()
		keep, err := c.relay(x)
		if err != nil {
			c.cur.Store(deadExchange)
			c.failed(x, err)
			return
		}
		if !keep {
			c.cur.CompareAndSwap(x, deadExchange)
			if x.up != nil && !x.up.complete() {
				// The answer is out before the body is in: the rest is
				// not wanted (RST_STREAM NO_ERROR, RFC 9113 8.1).
				x.up.abandon()
				x.s.Reset(http2.ErrCodeNo)
			}
			return
		}
		c.fresh = false
		c.resp.Status = 0 // nothing of the next response read yet
		// Idle: the next request's response, or the app closing it.
		c.conn.SetReadDeadline(time.Now().Add(appIdleTimeout))
		err = c.fill(c.conn)
		c.conn.SetReadDeadline(time.Time{})
		if c.cur.CompareAndSwap(nil, deadExchange) {
			c.pool.drop(c)
			return
		}
		if err != nil { // a request was written just as it ended
			c.failed(c.cur.Load(), err)
			return
		}
	}
}

// failed ends x, whose response did not come whole: sent again on a new
// connection if this kept-alive one ended before any of it did and x may
// be sent twice (it has no body), else answered with 503 if nothing went
// out yet, else reset.
func (c *appConn) failed(x *appExchange, err error) {
	x.up.abandonIfAny() // a body is never sent twice: only bodyless requests are
	switch {
	case x.finished.Load():
	case !x.started.Load() && !c.fresh && len(c.buf) == 0 && c.resp.Status == 0 && x.up == nil && replayable(x.r):
		c.pool.send(c.addr, x, true)
	case !x.started.Load():
		x.failUpstream("UF", "the app did not answer", err)
	default:
		x.s.Reset(http2.ErrCodeInternal)
		if x.claim() {
			x.ex.flags, x.ex.reason = "UC", "the app's response broke off: "+err.Error()
			x.recordClaimed(x.code)
		}
	}
}

// relay reads x's response and writes it to x's stream; keep says the
// connection is in the pool for another request (and may already carry
// one).
func (c *appConn) relay(x *appExchange) (keep bool, err error) {
	c.resp = h1.Response{Fields: c.resp.Fields[:0]}
	c.kept = false
	c.conn.SetReadDeadline(time.Now().Add(appHeadTimeout))
	var n int
	for {
		n, err = c.readHead(x.r.Method == "HEAD")
		if err != nil {
			if wait := x.headWait(); wait > 0 && isTimeout(err) {
				c.conn.SetReadDeadline(time.Now().Add(wait))
				continue
			}
			return false, err
		}
		if c.resp.Status >= 200 {
			break
		}
		if c.resp.Status == http.StatusSwitchingProtocols {
			return false, errors.New("101 Switching Protocols, which HTTP/2 has no way to pass on")
		}
		if x.s.WriteHeaders(false, c.fields(c.resp.Status)...) != nil {
			return false, nil
		}
		c.buf = c.buf[n:]
	}
	c.conn.SetReadDeadline(time.Time{})
	body := c.resp.Body
	x.code = c.resp.Status
	x.started.Store(true)
	fields := c.fields(c.resp.Status)
	c.buf = c.buf[n:]
	if body.None() {
		c.finish(x)
		_ = x.s.WriteHeaders(true, fields...)
		return c.kept, nil
	}
	if body.Chunked || len(c.buf) == 0 {
		if x.s.WriteHeaders(false, fields...) != nil {
			return false, nil
		}
		fields = nil
	}
	switch {
	case body.Chunked:
		err = c.relayChunked(x)
	default:
		err = c.relayLength(x, body.Length, body.UntilClose, fields)
	}
	return c.kept, err
}

// finish records x once its response has been read whole and, unless the
// app closes the connection after it, puts the connection back in the
// pool before the response's last frame goes out: a caller that sends
// its next request the moment it has this answer finds the connection
// idle, as net/http's transport does before a body's EOF. Nothing after
// this may fail the connection: it may already carry the next request.
func (c *appConn) finish(x *appExchange) {
	x.record()
	if c.resp.Close || x.up != nil && !x.up.complete() {
		return
	}
	c.cur.Store(nil)
	if c.pool.putIdle(c) {
		c.kept = true
		return
	}
	c.cur.Store(deadExchange)
}

// readHead reads until buf holds a response head and parses it.
func (c *appConn) readHead(head bool) (int, error) {
	for {
		if len(c.buf) > 0 {
			n, err := h1.ParseResponse(c.buf, h1.Limits{}, head, &c.resp)
			if n > 0 || err != nil {
				return n, err
			}
		}
		if err := c.fill(c.conn); err != nil {
			return 0, err
		}
	}
}

// fields are the response head's fields for HTTP/2: names in lower case,
// without those of the connection.
func (c *appConn) fields(status int) []h2.Field {
	out := make([]h2.Field, 1, 1+len(c.resp.Fields))
	out[0] = h2.Field{Name: ":status", Value: strconv.Itoa(status)}
	conn := c.resp.Field("connection")
	for _, f := range c.resp.Fields {
		name := h1.LowerName(f.Name)
		if hopByHopField(name) || name == peerHeaderField || listed(conn, name) {
			continue
		}
		out = append(out, h2.Field{Name: name, Value: string(f.Value)})
	}
	return out
}

// listed reports whether a Connection field's value names field name.
func listed(connection []byte, name string) bool {
	for tok := range bytes.SplitSeq(connection, []byte(",")) {
		if h1.EqualFold(bytes.TrimSpace(tok), name) {
			return true
		}
	}
	return false
}

// relayLength relays a body of length bytes, or one that runs until the
// app closes the connection; head, if not nil, is the response's header
// section, still to be sent, with the body's first bytes (at hand in buf).
func (c *appConn) relayLength(x *appExchange, length int64, untilClose bool, head []h2.Field) error {
	for left := length; untilClose || left > 0; {
		if len(c.buf) == 0 {
			err := c.fill(c.conn)
			if untilClose && err == io.EOF {
				x.record()
				_ = x.s.WriteData(nil, true)
				return nil
			}
			if err != nil {
				return err
			}
		}
		k := len(c.buf)
		if !untilClose {
			k = int(min(left, int64(k)))
			left -= int64(k)
		}
		x.respBytes.Add(int64(k))
		last := !untilClose && left == 0
		if last {
			c.finish(x)
		}
		p := c.buf[:k]
		c.buf = c.buf[k:] // p stays valid: only this goroutine fills buf
		if head != nil {
			sent, err := x.s.WriteHeadersData(head, p, last)
			if err != nil {
				return streamGone(last)
			}
			head, p = nil, p[sent:]
		}
		if err := x.s.WriteData(p, last); err != nil {
			return streamGone(last)
		}
	}
	return nil
}

// errStreamGone: the caller reset the stream; gone recorded it.
var errStreamGone = errors.New("the caller reset the stream")

// streamGone is what a failed write to the caller means for the app
// connection: nothing after the response's last bytes (read whole, the
// connection may already serve the next request), else errStreamGone.
func streamGone(last bool) error {
	if last {
		return nil
	}
	return errStreamGone
}

func (c *appConn) relayChunked(x *appExchange) error {
	var ch h1.Chunks
	for {
		data, n, done, err := ch.Next(c.buf)
		if err != nil {
			return err
		}
		c.buf = c.buf[n:]
		if len(data) > 0 {
			x.respBytes.Add(int64(len(data)))
			if x.s.WriteData(data, false) != nil {
				return errStreamGone
			}
		}
		if done {
			c.finish(x)
			if len(ch.Trailers) == 0 {
				_ = x.s.WriteData(nil, true)
				return nil
			}
			trailers := make([]h2.Field, 0, len(ch.Trailers))
			for _, f := range ch.Trailers {
				trailers = append(trailers, h2.Field{Name: h1.LowerName(f.Name), Value: string(f.Value)})
			}
			_ = x.s.WriteHeaders(true, trailers...)
			return nil
		}
		if n == 0 {
			if err := c.fill(c.conn); err != nil {
				return err
			}
		}
	}
}

// replayable reports whether a request without a body may reach the app
// twice, as net/http's transport decides: an idempotent method, or an
// idempotency key.
func replayable(r *http.Request) bool {
	switch r.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}
