package proxy

// The outbound side of the engine (issue #18) for an app's HTTP/1.1
// connections: no goroutine per request; responses written by the mesh
// connection's reader. docs/architecture.md, "The request path's engine".

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/balancer"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/rawio"
	routing "github.com/trellis-mesh/trellis/internal/route"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// h1App is one app HTTP/1.1 connection served by the engine. Its
// goroutine reads and forwards requests; the h2 connection's reader writes
// each response back (h1Exchange.upHeaders), handing the rest to a flush goroutine
// only when the app's socket is full.
type h1App struct {
	o    *Outbound
	conn net.Conn // rawio
	dst  netip.AddrPort
	readBuf
	req h1.Request

	opt       h1Options
	done      chan struct{} // one token per finished response
	served    bool          // a request was read
	idleUntil time.Time     // when the wait for the next request times out

	outMu        sync.Mutex
	out          []byte // response bytes waiting for the socket (guarded by outMu)
	credit       map[*h2.Stream]int
	flushing     bool
	current      *h1Exchange // the exchange whose response is being written
	closePending bool        // close once flushed
	flushed      sync.Cond   // signalled when flushing ends
}

// h1Exchange is one request in flight: the stream's Value.
type h1Exchange struct {
	app     *h1App
	head    bool // HEAD: the response has no body
	minor   byte
	chunked bool // the response goes to the app chunked
	started bool // the response head went out
	start   time.Time
	done    func(balancer.Result)

	// For the metrics and the access log.
	line      requestLine
	ex        exchange
	code      int
	reqBytes  int64
	respBytes int64
	finished  atomic.Bool // finish ran
	// closeAfter: the connection ends with this exchange (the request
	// asked, HTTP/1.0, a body until close, a refusal).
	closeAfter bool
	stream     *h2.Stream // set before the first byte of the request body is sent
	location   string     // a route's redirect, for fail to answer with
	respEdit   fieldEdit  // a route's changes to the response head
	// held is the response head, kept back on the reader goroutine to go
	// out with the body's first bytes (or when the reader has handled
	// all it read): one write to the app instead of two.
	held []byte
}

// engineConns are the engine's app connections, for a drain: it refuses
// new ones, closes those waiting for a request and lets the others finish
// the response in flight.
type engineConns struct {
	mu       sync.Mutex
	conns    map[*h1App]bool // -> waiting for a request
	draining bool
}

var errDraining = errors.New("the proxy is draining")

func (e *engineConns) add(a *h1App) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.draining {
		return false
	}
	if e.conns == nil {
		e.conns = map[*h1App]bool{}
	}
	e.conns[a] = false
	return true
}

func (e *engineConns) remove(a *h1App) {
	e.mu.Lock()
	delete(e.conns, a)
	e.mu.Unlock()
}

// setIdle records whether a waits for a request; false when a must not
// wait (draining).
func (e *engineConns) setIdle(a *h1App, idle bool) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if idle && e.draining {
		return false
	}
	if _, ok := e.conns[a]; ok { // not once its goroutine has left
		e.conns[a] = idle
	}
	return true
}

// shutdown drains the connections until ctx ends, then closes the rest.
func (e *engineConns) shutdown(ctx context.Context) error {
	e.mu.Lock()
	e.draining = true
	for a, idle := range e.conns {
		if idle {
			a.conn.Close()
		}
	}
	e.mu.Unlock()
	return awaitEmpty(ctx, &e.mu, func() int { return len(e.conns) }, func() {
		for a := range e.conns {
			a.conn.Close()
		}
	})
}

// h1Options are what the listener gives the engine's connections.
type h1Options struct {
	// headerTimeout bounds the read of a request head from its first
	// byte; idleTimeout the wait for the next request.
	headerTimeout, idleTimeout time.Duration
	// handoff serves a connection the engine does not (an Upgrade such
	// as WebSocket, CONNECT) on today's net/http path, with the bytes
	// read of it.
	handoff func(net.Conn)
}

// serveH1 serves c, whose first bytes are in buffered, until it closes.
func (o *Outbound) serveH1(c net.Conn, dst netip.AddrPort, buffered []byte, opt h1Options) {
	c = withRawIO(c)
	a := &h1App{o: o, conn: c, dst: dst, done: make(chan struct{}, 1), opt: opt}
	if len(buffered) > 0 {
		a.base = readBuffers.Get()
		a.buf = append(a.base[:0], buffered...)
	}
	a.flushed.L = &a.outMu
	if !o.engineConns.add(a) {
		c.Close() // draining
		return
	}
	a.serve()
}

// idleGrace is how long an app connection's goroutine waits for the next
// request itself. Past it the wait goes to the idle poller
// (rawio.WaitReadable) and the goroutine ends: a busy connection keeps
// its goroutine, an idle one holds none (nor its stack).
const idleGrace = 50 * time.Millisecond

// serve reads and forwards the connection's requests until it ends, or
// until it waits idle in the poller, which calls serve again, on a new
// goroutine, when the next request comes.
func (a *h1App) serve() {
	handedOff, parked := false, false
	defer func() {
		if parked {
			return
		}
		if !handedOff { // net/http reads the rest of buf
			a.closeAfterFlush()
			a.drop()
		}
		a.o.engineConns.remove(a)
	}()
	for {
		n, err := a.readHead()
		var herr *h1.Error
		switch {
		case errors.Is(err, errIdle):
			parked = true
			a.park()
			return
		case errors.As(err, &herr) && bytes.HasPrefix(a.buf, []byte("PRI ")):
			return // an HTTP/2 preface gone wrong: no answer it could read (RFC 9113 3.4)
		case errors.As(err, &herr):
			a.newExchange().fail(herr.Status, "DPE", herr.Reason)
			return
		case err != nil:
			return
		}
		if a.handedOff() {
			a.waitFlushed()
			handedOff = true
			a.opt.handoff(&peekedConn{Conn: a.conn, r: bufio.NewReader(io.MultiReader(bytes.NewReader(a.buf), a.conn))})
			return
		}
		ex := a.newExchange()
		if !a.forward(ex, n) || !a.awaitResponse(ex) || ex.closeAfter {
			return
		}
	}
}

// errIdle: the connection waited idleGrace for its next request; it waits
// on in the idle poller.
var errIdle = errors.New("idle")

// park hands the wait for the next request to the idle poller. Past the
// idle timeout, or closed by a drain, the connection ends.
func (a *h1App) park() {
	rawConn(a.conn).WaitReadable(time.Until(a.idleUntil), func(err error) {
		if err == nil {
			contained(a.conn, a.serve) // as the connection's first goroutine was
			return
		}
		a.closeAfterFlush()
		a.drop()
		a.o.engineConns.remove(a)
	})
}

// handedOff reports whether the request parsed is one for net/http:
//   - an Upgrade (WebSocket) or CONNECT, which make the connection a byte
//     stream;
//   - Expect: 100-continue, whose interim answer net/http's server gives
//     when the body is first read;
//   - one to a service with an endpoint outside the mesh (plain HTTP);
//   - one to a service whose routes ask for timeouts, retries or mirrors
//     (resilience.go).
//
// The connection stays there for the rest of its requests.
func (a *h1App) handedOff() bool {
	if a.req.Upgrade || a.req.Form == h1.FormAuthority || a.req.ExpectContinue {
		return true
	}
	r, ok := a.o.routes.Load().byVIP[a.dst]
	return ok && (r.outside || r.resilient)
}

// closeAfterFlush closes the connection once the response bytes waiting
// for the socket are written.
func (a *h1App) closeAfterFlush() {
	a.outMu.Lock()
	if a.flushing {
		a.closePending = true
		a.outMu.Unlock()
		return
	}
	a.outMu.Unlock()
	a.conn.Close()
}

// awaitResponse waits for ex's response to be written, reading meanwhile:
// the app's next request, or the end of its connection, which means it
// gave up on the response (DC). false ends the connection.
func (a *h1App) awaitResponse(ex *h1Exchange) bool {
	// With the next request already buffered (pipelined), there is
	// nothing to read until this response is out.
	for len(a.buf) == 0 && !ex.finished.Load() {
		// A short wait, looked at again: once the response is out, the
		// wait for the next request may go to the idle poller.
		a.conn.SetReadDeadline(time.Now().Add(idleGrace))
		err := a.fill()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			continue // a slow response: keep waiting for it
		}
		if err != nil {
			if !ex.finished.Load() {
				ex.gone()
			}
			return false
		}
		a.o.engineConns.setIdle(a, false)
		break // the next request (pipelined) waits in buf
	}
	<-a.done
	return true
}

// waitFlushed waits until no response bytes wait for the socket.
func (a *h1App) waitFlushed() {
	a.outMu.Lock()
	for a.flushing {
		a.flushed.Wait()
	}
	a.outMu.Unlock()
}

// readHead reads until buf holds a whole request head and returns its
// length.
func (a *h1App) readHead() (int, error) {
	defer a.conn.SetReadDeadline(time.Time{})
	if len(a.buf) == 0 {
		// Between requests the idle timeout holds; a new connection's
		// first request has the header timeout from its start, as
		// net/http does.
		wait := cmp.Or(a.opt.idleTimeout, 5*time.Minute)
		if !a.served {
			wait = cmp.Or(a.opt.headerTimeout, 10*time.Second)
		}
		a.idleUntil = time.Now().Add(wait)
		grace := a.served && wait > idleGrace && rawConn(a.conn) != nil
		if grace {
			a.conn.SetReadDeadline(time.Now().Add(idleGrace))
		} else {
			a.conn.SetReadDeadline(a.idleUntil)
		}
		if !a.o.engineConns.setIdle(a, true) {
			return 0, errDraining
		}
		err := a.fill()
		if ne, ok := err.(net.Error); ok && ne.Timeout() && grace {
			return 0, errIdle // still idle, for a drain to find
		}
		a.o.engineConns.setIdle(a, false)
		if err != nil {
			return 0, err
		}
	}
	a.served = true
	a.conn.SetReadDeadline(time.Now().Add(cmp.Or(a.opt.headerTimeout, 10*time.Second)))
	for {
		n, err := h1.ParseRequest(a.buf, h1.Limits{}, &a.req)
		if n > 0 || err != nil {
			return n, err
		}
		if err := a.fill(); err != nil {
			return 0, err
		}
	}
}

func (a *h1App) fill() error { return a.readBuf.fill(a.conn) }

// newExchange starts the record of the request parsed into a.req (all
// "unknown" for one refused before it parsed).
func (a *h1App) newExchange() *h1Exchange {
	r := &a.req
	method := h1.Method(r.Method)
	return &h1Exchange{app: a, head: method == "HEAD", minor: r.Minor, start: time.Now(), closeAfter: r.Close,
		line: requestLine{method, string(r.Host), string(pathOf(r.Target)), httpVersion(r.Minor)},
		ex:   exchange{dest: telemetry.Unknown, service: "unknown", svcName: "unknown", svcNS: "unknown"}}
}

// forward sends the parsed request (its head the first n bytes of buf)
// on a stream to a picked endpoint; false ends the connection.
func (a *h1App) forward(ex *h1Exchange, n int) bool {
	r := &a.req
	rt := a.o.routes.Load()
	path, err := NormalizePath(ex.line.path)
	if err != nil {
		return ex.fail(400, "DPE", err.Error())
	}
	ex.line.path = path
	fields := make([]h2.Field, 4, 4+len(r.Fields)+2) // room for the trace context
	fields[0], fields[1] = h2.Field{Name: ":method", Value: ex.line.method}, h2.Field{Name: ":scheme", Value: "http"}
	fields[2], fields[3] = h2.Field{Name: ":authority", Value: ex.line.authority}, h2.Field{Name: ":path", Value: path + string(queryOf(r.Target))}
	for _, f := range r.Fields {
		name := h1.LowerName(f.Name)
		if hopByHopField(name) || name == "host" || name == peerHeaderField || name == "x-trellis-attempt" {
			continue // the peer field and the attempt count are the proxies' to set
		}
		fields = append(fields, h2.Field{Name: name, Value: string(f.Value)})
	}
	if a.o.Tracing != nil {
		ex.ex.span = a.o.Tracing.StartCarrier(fieldCarrier{&fields}, trace.SpanKindClient, ex.line.authority+path)
	}
	route, ok := rt.byVIP[a.dst]
	if !ok {
		return ex.fail(404, "NR", a.dst.String()+" is not a service this proxy knows")
	}
	ex.ex.service, ex.ex.svcName, ex.ex.svcNS = route.host, route.name, route.namespace
	if route.table != nil {
		var d routing.Decision
		route, d = rt.routed(route, &routing.Request{Method: ex.line.method, Host: ex.line.authority, Path: path,
			RawQuery: string(bytes.TrimPrefix(queryOf(r.Target), []byte("?"))), Header: fieldsView(fields)})
		if d.Status != 0 {
			flag, reason := routeRefusal(d)
			ex.location = d.Location
			return ex.fail(d.Status, flag, reason)
		}
		fields, ex.respEdit = applyRoute(fields, d), editFields(d.ResponseHeaders)
		ex.ex.service, ex.ex.svcName, ex.ex.svcNS = route.host, route.name, route.namespace
	}
	ep, err := route.bal.Pick()
	if err != nil {
		return ex.fail(503, "UH", route.service+": "+err.Error())
	}
	if _, known := rt.identities[ep.Addr]; !known {
		// Balancers outlive configs: Update gives one its new
		// endpoints before it swaps the table in, so a pick may name an
		// endpoint of a table still being built. Update holds mu until
		// the swap: look again once it is done.
		a.o.mu.Lock()
		rt = a.o.routes.Load()
		a.o.mu.Unlock()
	}
	ex.ex.dest, ex.ex.upstream, ex.done = rt.peers[ep.Addr], ep.Addr, ep.Start()
	if _, meshed := rt.identities[ep.Addr]; !meshed {
		// The endpoint has no sidecar now (handedOff saw the service
		// differently): this connection ends, the next goes to net/http.
		return ex.fail(503, "UF", route.service+": endpoint "+ep.Addr+" left the mesh; retry")
	}
	ex.ex.mutualTLS = true
	fields = append(fields, h2.Field{Name: peerHeaderField, Value: route.meta})
	body := r.Body
	a.buf = a.buf[n:]
	if body.Chunked && !r.ExpectContinue {
		// The request goes out only once its first chunk-size line is
		// known good, so malformed framing never reaches the app.
		for {
			var probe h1.Chunks
			_, used, _, err := probe.Next(a.buf)
			if err != nil {
				return ex.fail(400, "DPE", err.Error())
			}
			if used > 0 {
				break
			}
			if err := a.fill(); err != nil {
				return false
			}
		}
	}
	a.outMu.Lock()
	a.current = ex
	a.outMu.Unlock()
	st, err := a.o.pool.stream(ep.Addr, ex, ex.head, body.None(), fields...)
	ex.stream = st
	if err != nil {
		return ex.fail(503, "UF", route.service+": endpoint "+ep.Addr+": "+err.Error())
	}
	if !body.None() {
		return a.sendBody(st, body)
	}
	return true
}

// gone records that the app closed its connection before the response
// ended (DC; code 0 if none had started) and resets the stream.
func (ex *h1Exchange) gone() {
	if ex.stream != nil {
		ex.stream.Reset(http2.ErrCodeCancel)
	}
	if !ex.claim() {
		return
	}
	if !ex.started {
		ex.code = 0
	}
	ex.ex.flags = "DC"
	ex.recordClaimed(true)
	ex.release()
}

// abandoned: the app gave up on the request (DC) or broke its body off
// (DPE), which says nothing of the endpoint.
func (ex *h1Exchange) abandoned() bool { return ex.ex.flags == "DC" || ex.ex.flags == "DPE" }

// fail answers a request the engine could not forward, or refused, and
// records it; the connection then ends.
func (ex *h1Exchange) fail(code int, flag, reason string) bool {
	if !ex.claim() {
		return false
	}
	ex.code, ex.ex.flags, ex.ex.reason = code, flag, reason
	ex.closeAfter = true
	ex.recordClaimed(true)
	ex.app.refuse(code, flag, reason, ex.location)
	ex.release()
	return false
}

// sendBody forwards the request body, as much as is buffered and then
// from the socket.
func (a *h1App) sendBody(st *h2.Stream, body h1.Body) bool {
	if body.Chunked {
		var ch h1.Chunks
		for {
			data, n, done, err := ch.Next(a.buf)
			if err != nil {
				a.abort(st, "DPE")
				return false
			}
			if len(data) > 0 || done {
				st.Value.(*h1Exchange).reqBytes += int64(len(data))
				if st.WriteData(data, done) != nil {
					return false
				}
			}
			a.buf = a.buf[n:]
			if done {
				return true
			}
			if n == 0 && a.fill() != nil {
				a.abort(st, "DC")
				return false
			}
		}
	}
	for left := body.Length; left > 0; {
		if len(a.buf) == 0 && a.fill() != nil {
			a.abort(st, "DC")
			return false
		}
		k := int(min(left, int64(len(a.buf))))
		left -= int64(k)
		st.Value.(*h1Exchange).reqBytes += int64(k)
		if st.WriteData(a.buf[:k], left == 0) != nil {
			return false
		}
		a.buf = a.buf[k:]
	}
	return true
}

// abort resets a stream whose request body could not be read to its end
// (the app went away, DC, or sent malformed chunks, DPE) and records it.
func (a *h1App) abort(st *h2.Stream, flag string) {
	st.Reset(http2.ErrCodeCancel)
	ex := st.Value.(*h1Exchange)
	if flag == "DPE" && !ex.started {
		ex.fail(400, "DPE", "malformed chunked request body")
		return
	}
	if !ex.claim() {
		return
	}
	ex.ex.flags = flag
	ex.recordClaimed(true)
	ex.release()
}

// refuse answers the current request itself and ends the connection.
func (a *h1App) refuse(status int, flag, reason, location string) bool {
	msg := reason + "\n"
	resp := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\nContent-Type: text/plain; charset=utf-8\r\n"
	if flag != "" {
		resp += flagsHeader + ": " + flag + "\r\n"
	}
	if location != "" {
		resp += "Location: " + location + "\r\n"
	}
	resp += "Connection: close\r\nContent-Length: " + strconv.Itoa(len(msg)) + "\r\n\r\n" + msg
	a.waitFlushed() // a pipelined request's refusal follows the response before it
	_, _ = a.conn.Write([]byte(resp))
	return false
}

func pathOf(target []byte) []byte {
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		return target[:i]
	}
	return target
}

func queryOf(target []byte) []byte {
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		return target[i:]
	}
	return nil
}

func hopByHopField(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
		return true
	}
	return false
}

// upHeaders, upData and upClosed write the response back to the app
// connection that asked, on the mesh connection's reader goroutine.
func (ex *h1Exchange) upHeaders(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	if ex.started { // trailers
		ex.record(false)
		out := ex.held
		if ex.chunked {
			if out == nil {
				out = headBuffers.Get()[:0]
			}
			out = appendTrailers(append(out, "0\r\n"...), f)
		}
		ex.held = nil
		if out != nil {
			ex.app.write(s, out, 0)
			headBuffers.Put(out)
		}
		ex.release()
		return
	}
	status := f.PseudoValue("status")
	code, _ := strconv.Atoi(status)
	if code < 200 && ex.minor == 0 {
		return // an interim answer an HTTP/1.0 client cannot read (RFC 9110 15.2)
	}
	hdr := append(append(append(headBuffers.Get()[:0], "HTTP/1."...), '0'+ex.minor, ' '), status...)
	hdr = append(append(append(hdr, ' '), http.StatusText(code)...), "\r\n"...)
	length := false
	edit := ex.respEdit
	if code < 200 {
		edit = fieldEdit{} // a route changes the final head only
	}
	for _, hf := range f.RegularFields() {
		if hopByHopField(hf.Name) || hf.Name == peerHeaderField || edit.drop[hf.Name] {
			continue
		}
		length = length || hf.Name == "content-length"
		hdr = append(append(append(append(hdr, hf.Name...), ": "...), hf.Value...), "\r\n"...)
	}
	for _, hf := range edit.add {
		hdr = append(append(append(append(hdr, hf.Name...), ": "...), hf.Value...), "\r\n"...)
	}
	if code >= 200 {
		ex.started, ex.code = true, code
		noBody := ex.head || code == 204 || code == 304
		if !length && !noBody && !end {
			ex.chunked = ex.minor == 1
			if ex.chunked {
				hdr = append(hdr, "transfer-encoding: chunked\r\n"...)
			} else {
				ex.closeAfter = true // HTTP/1.0: the body runs until close
			}
		}
	}
	hdr = append(hdr, "\r\n"...)
	if code >= 200 && !end {
		ex.held = hdr
		return
	}
	if end {
		ex.record(false)
	}
	ex.app.write(s, hdr, 0)
	headBuffers.Put(hdr)
	if end {
		ex.release()
	}
}

func (ex *h1Exchange) holding() bool { return ex.held != nil }

func (ex *h1Exchange) flushHeld() {
	if ex.held != nil {
		ex.app.write(nil, ex.held, 0)
		headBuffers.Put(ex.held)
		ex.held = nil
	}
}

func (ex *h1Exchange) upData(s *h2.Stream, p []byte, end bool) {
	ex.respBytes += int64(len(p))
	out, pooled := p, false
	if ex.held != nil || ex.chunked {
		out, pooled = ex.held, true
		if out == nil {
			out = headBuffers.Get()[:0]
		}
		if ex.chunked && len(p) > 0 {
			out = append(strconv.AppendInt(out, int64(len(p)), 16), "\r\n"...)
			out = append(append(out, p...), "\r\n"...)
		} else {
			out = append(out, p...)
		}
		if ex.chunked && end {
			out = append(out, "0\r\n\r\n"...)
		}
		ex.held = nil
	}
	if end {
		ex.record(false)
	}
	ex.app.write(s, out, len(p))
	if pooled {
		headBuffers.Put(out)
	}
	if end {
		ex.release()
	}
}

func (ex *h1Exchange) upClosed(*h2.Stream, error) {
	if ex.held != nil { // reset before any of the response reached the app
		headBuffers.Put(ex.held)
		ex.held, ex.started = nil, false
	}
	if !ex.started {
		ex.fail(503, "UF", "the endpoint reset the request")
		return
	}
	if !ex.claim() {
		return
	}
	ex.ex.flags = "UC"
	ex.recordClaimed(true)
	ex.app.conn.Close() // cut off midway: the app must see it
	ex.release()
}

// record records the exchange's end, once: the balancer's result, the
// metrics, the access log. It runs before the response's last bytes are
// written, so an app that has its answer finds it counted. It reports
// whether this call recorded it.
func (ex *h1Exchange) record(failed bool) bool {
	if !ex.claim() {
		return false
	}
	ex.recordClaimed(failed)
	return true
}

// claim makes the caller the one that ends the exchange: the reader's
// goroutine and the app's can both see it end (a reset racing a failed
// write); only the winner may set its outcome and record it.
func (ex *h1Exchange) claim() bool { return !ex.finished.Swap(true) }

func (ex *h1Exchange) recordClaimed(failed bool) {
	d := time.Since(ex.start)
	if ex.done != nil {
		res := balancer.HTTPResult(ex.code, failed, d)
		res.Abandoned = ex.abandoned()
		ex.done(res)
	}
	o := ex.app.o
	req := telemetry.Request{Reporter: "source", Source: o.routes.Load().self, Dest: ex.ex.dest,
		Service: ex.ex.service, ServiceName: ex.ex.svcName, ServiceNamespace: ex.ex.svcNS,
		Protocol: "http", Code: ex.code, MutualTLS: ex.ex.mutualTLS, Flags: ex.ex.flags, Duration: d,
		RequestBytes: ex.reqBytes, ResponseBytes: ex.respBytes, Method: ex.line.method, Path: ex.line.path}
	recorder{o.Metrics, o.AccessLog, o.Tracing}.record(ex.line, &ex.ex, req)
}

// release lets the app connection go on after a recorded exchange: the
// next request, or the end of the connection.
func (ex *h1Exchange) release() {
	// Draining, the connection ends with its response; otherwise it
	// waits for the next request (idle, for a drain that comes).
	if !ex.app.o.engineConns.setIdle(ex.app, true) || ex.closeAfter {
		ex.app.closeAfterFlush() // the app's goroutine sees its read end
	}
	select {
	case ex.app.done <- struct{}{}:
	default:
	}
}

// write sends p to the app without blocking the caller: what the socket
// does not take now is flushed by a goroutine of its own, and the stream's
// window for consumed body bytes goes back once they are written.
func (a *h1App) write(s *h2.Stream, p []byte, consumed int) {
	a.outMu.Lock()
	if a.flushing {
		a.out = append(a.out, p...)
		a.creditLocked(s, consumed)
		a.outMu.Unlock()
		return
	}
	a.outMu.Unlock()
	n, err := tryWrite(a.conn, p)
	if err != nil {
		return
	}
	if n == len(p) {
		if consumed > 0 {
			s.Consumed(consumed)
		}
		return
	}
	a.outMu.Lock()
	a.out = append(a.out, p[n:]...)
	a.creditLocked(s, consumed)
	a.flushing = true
	a.outMu.Unlock()
	go a.flush()
}

// writeProgressing writes p to c, failing when a piece of it makes no
// progress for idle (a peer that stopped reading); 0: no bound.
func writeProgressing(c net.Conn, p []byte, idle time.Duration) error {
	for len(p) > 0 {
		n := min(len(p), 64<<10)
		if idle > 0 {
			c.SetWriteDeadline(time.Now().Add(idle))
		}
		if _, err := c.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	if idle > 0 {
		c.SetWriteDeadline(time.Time{})
	}
	return nil
}

// creditLocked notes (outMu held) that consumed bytes of s's body go back
// to its window once what is queued is written.
func (a *h1App) creditLocked(s *h2.Stream, consumed int) {
	if consumed == 0 {
		return
	}
	if a.credit == nil {
		a.credit = map[*h2.Stream]int{}
	}
	a.credit[s] += consumed
}

// tryWrite writes what c takes of p now; a connection without raw I/O
// (not TCP, or wrapped) is written to in full, waiting.
func tryWrite(c net.Conn, p []byte) (int, error) {
	if rc := rawConn(c); rc != nil {
		return rc.TryWrite(p)
	}
	return c.Write(p)
}

// withRawIO gives c raw I/O (rawio), under a connection slot's wrapper
// so that the slot's Close still frees it.
func withRawIO(c net.Conn) net.Conn {
	if lc, ok := c.(*limitedConn); ok {
		lc.Conn = rawio.Wrap(lc.Conn)
		return lc
	}
	return rawio.Wrap(c)
}

// rawConn is c's raw I/O, under a connection slot's wrapper; nil if c has
// none.
func rawConn(c net.Conn) *rawio.Conn {
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	rc, _ := c.(*rawio.Conn)
	return rc
}

// flush writes out what the socket did not take, waiting for room.
func (a *h1App) flush() {
	for {
		a.outMu.Lock()
		out, credit := a.out, a.credit
		a.out, a.credit = nil, nil
		if len(out) == 0 {
			a.flushing = false
			a.flushed.Broadcast()
			closing := a.closePending
			a.outMu.Unlock()
			if closing {
				a.conn.Close()
			}
			return
		}
		a.outMu.Unlock()
		if err := writeProgressing(a.conn, out, a.o.WriteIdleTimeout); err != nil {
			a.outMu.Lock()
			a.flushing = false
			a.flushed.Broadcast()
			ex := a.current
			a.outMu.Unlock()
			if ex != nil {
				ex.gone() // a client that stopped reading: DC
			}
			a.conn.Close()
			return
		}
		for s, n := range credit {
			s.Consumed(n)
		}
	}
}

// fieldCarrier reads and rewrites a request's trace headers among its
// fields (names in lower case) for the tracing propagators.
type fieldCarrier struct{ fields *[]h2.Field }

func (c fieldCarrier) Get(key string) string {
	for _, f := range *c.fields {
		if f.Name == key {
			return f.Value
		}
	}
	return ""
}

func (c fieldCarrier) Set(key, value string) {
	for i, f := range *c.fields {
		if f.Name == key {
			(*c.fields)[i].Value = value
			return
		}
	}
	*c.fields = append(*c.fields, h2.Field{Name: key, Value: value})
}

func (c fieldCarrier) Keys() []string {
	keys := make([]string, 0, len(*c.fields))
	for _, f := range *c.fields {
		keys = append(keys, f.Name)
	}
	return keys
}

func appendTrailers(b []byte, f *http2.MetaHeadersFrame) []byte {
	for _, hf := range f.RegularFields() {
		b = append(append(append(append(b, hf.Name...), ": "...), hf.Value...), "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// httpVersion is the protocol of an HTTP/1.x request, as its request line
// and access log entry spell it.
func httpVersion(minor byte) string {
	if minor == 1 {
		return "HTTP/1.1"
	}
	return "HTTP/1." + strconv.Itoa(int(minor))
}
