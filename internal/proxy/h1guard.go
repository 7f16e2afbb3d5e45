package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
)

// h1Guard checks the framing of HTTP/1.1 requests on a connection before
// net/http parses them, and refuses what net/http would let through but a
// server behind the proxy might frame differently (request smuggling):
// bare LF line endings, obs-fold continuation lines, more than one
// Content-Length or a list of them, Content-Length with Transfer-Encoding,
// a Transfer-Encoding other than chunked, and malformed chunk framing.
//
// A request's header block is passed on only once it is complete and
// valid (for a chunked body, together with its first chunk size, unless
// the client waits for 100 Continue). On a violation the guard passes on
// a request line net/http answers with 400 and a closed connection, so the
// bad request is never forwarded. It steps aside only once an Upgrade is
// answered with 101 (switched; an Upgrade refused keeps the connection an
// HTTP/1.1 one, guarded). HTTP/2 never reaches it: the engine serves it.
type h1Guard struct {
	src   io.Reader
	from  net.Addr
	store []byte // backs buf
	buf   []byte // read from src, not scanned yet
	ready []byte // checked, for Read to return
	held  []byte // a checked header block waiting for its first chunk size
	state guardState
	left  int64 // bytes of body or chunk data still to pass
	after guardState
	err   error // from src, returned once ready is drained
	// upgraded is set (from the handler's goroutine) when the app
	// answered an Upgrade with 101: the bytes after it are another
	// protocol's.
	upgraded atomic.Bool
}

// switched tells the guard that its connection switched protocols: from
// its next read on, it steps aside.
func (g *h1Guard) switched() { g.upgraded.Store(true) }

type guardKey struct{}

// withGuard records c's framing guard, if c has one, in a connection's
// context.
func withGuard(ctx context.Context, c net.Conn) context.Context {
	if gc, ok := c.(*guardedConn); ok {
		return context.WithValue(ctx, guardKey{}, gc.g)
	}
	return ctx
}

// stepAsideOnSwitch is the reverse proxies' ModifyResponse: when the
// upstream switches protocols (101), the client connection's guard steps
// aside before the bytes of the new protocol flow. An Upgrade answered
// otherwise leaves the connection an HTTP/1.1 one, still guarded.
func stepAsideOnSwitch(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if g, ok := resp.Request.Context().Value(guardKey{}).(*h1Guard); ok {
			g.switched()
		}
	}
	return nil
}

type guardState int

const (
	gsHead guardState = iota
	gsBody
	gsChunkSize
	gsChunkData
	gsChunkEnd
	gsTrailers
	gsPass // HTTP/2 or switched protocols: no more checks
	gsDead // refused: nothing more is read
)

// Limits of the guard: a header block beyond maxGuardHead is passed on for
// net/http to refuse with 431; chunk-size lines are short.
const (
	maxGuardHead      = 64<<10 + 4<<10
	maxChunkSizeLine  = 1 << 10
	guardRefusalBytes = "\x00 / HTTP/1.1\r\n\r\n" // net/http: 400 Bad Request, close
)

var (
	errSmuggling = errors.New("request framing refused")
	// errNotHTTP1: the request line does not end in an HTTP/1.x version
	// (HTTP/2's preface gone wrong, or another protocol). The connection
	// is closed without an answer the client could not read anyway (RFC
	// 9113 3.4 wants exactly that for a bad HTTP/2 preface).
	errNotHTTP1 = errors.New("not an HTTP/1 request line")
)

// guardHTTP1 wraps a plaintext connection whose requests net/http serves.
func guardHTTP1(c net.Conn) net.Conn {
	return &guardedConn{Conn: c, g: &h1Guard{src: c, from: c.RemoteAddr()}}
}

type guardedConn struct {
	net.Conn
	g *h1Guard
}

func (c *guardedConn) Read(p []byte) (int, error) { return c.g.Read(p) }

func (g *h1Guard) Read(p []byte) (int, error) {
	if g.state != gsPass && g.upgraded.Load() {
		g.ready = append(append(g.ready, g.held...), g.buf...)
		g.held, g.buf, g.state = nil, nil, gsPass
	}
	for len(g.ready) == 0 {
		if g.err != nil {
			return 0, g.err
		}
		if len(g.buf) == 0 && len(g.held) == 0 {
			switch g.state {
			case gsDead:
				return 0, io.EOF
			case gsPass:
				return g.src.Read(p) // stepped aside: no copying
			case gsBody, gsChunkData:
				return g.readBody(p) // body bytes go straight through
			}
		}
		if len(g.buf) == 0 || !g.scan() {
			if err := g.fill(p); err != nil && len(g.ready) == 0 {
				return 0, err
			}
		}
	}
	n := copy(p, g.ready)
	g.ready = g.ready[n:]
	g.releaseScanBuffer()
	return n, nil
}

// fill reads more of the connection into buf. A timeout (net/http sets
// deadlines to interrupt reads) is returned and forgotten; any other error
// ends the stream. Between requests it waits in p, the caller's buffer, and
// takes a scan buffer only once bytes arrive: an idle keep-alive
// connection holds none.
func (g *h1Guard) fill(p []byte) error {
	var n int
	var err error
	if len(g.buf) == 0 && len(p) > 0 {
		n, err = g.src.Read(p)
		if n > 0 {
			g.buf = append(g.scanBuffer(), p[:n]...)
		}
	} else {
		if len(g.buf) == 0 {
			g.buf = g.scanBuffer()
		}
		if cap(g.buf)-len(g.buf) < 4<<10 {
			g.buf = append(make([]byte, 0, 2*cap(g.buf)+16<<10), g.buf...)
			g.store = g.buf
		}
		n, err = g.src.Read(g.buf[len(g.buf):cap(g.buf)])
		g.buf = g.buf[:len(g.buf)+n]
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return err
	}
	if err != nil {
		g.err = err
		g.scan()
		// Let net/http see whatever was cut off by the end.
		g.ready = append(append(g.ready, g.held...), g.buf...)
		g.held, g.buf = nil, nil
	}
	return nil
}

// scanBuffer returns the guard's empty scan buffer, taking one from the
// pool if it holds none.
func (g *h1Guard) scanBuffer() []byte {
	if g.store == nil {
		g.store = scanBuffers.Get()
	}
	return g.store[:0]
}

// releaseScanBuffer gives the scan buffer back once everything in it has
// been scanned.
func (g *h1Guard) releaseScanBuffer() {
	if len(g.buf) != 0 || g.store == nil {
		return
	}
	if cap(g.store) <= 64<<10 {
		scanBuffers.Put(g.store)
	}
	g.store, g.buf = nil, nil
}

// readBody reads body or chunk bytes directly into p.
func (g *h1Guard) readBody(p []byte) (int, error) {
	n, err := g.src.Read(p[:min(int64(len(p)), g.left)])
	if g.left -= int64(n); g.left == 0 {
		g.endData()
	}
	return n, err
}

func (g *h1Guard) endData() {
	if g.state == gsChunkData {
		g.state = gsChunkEnd
	} else {
		g.state = g.after
	}
}

// scan moves what it can from buf to ready; false when it needs more input.
func (g *h1Guard) scan() bool {
	progress := false
	for len(g.buf) > 0 {
		ok, err := g.step()
		if err != nil {
			refusals.Log(slog.LevelInfo, "refused HTTP/1.1 request", "from", g.from, "reason", err)
			g.held, g.buf, g.state = nil, nil, gsDead
			if !errors.Is(err, errNotHTTP1) {
				g.ready = append(g.ready, guardRefusalBytes...)
			}
			return true
		}
		if !ok {
			break
		}
		progress = true
	}
	return progress
}

// step consumes one unit from buf; false when buf holds less than one.
func (g *h1Guard) step() (bool, error) {
	switch g.state {
	case gsPass:
		g.release(len(g.buf))
		return true, nil
	case gsHead:
		return g.head()
	case gsBody, gsChunkData:
		n := int(min(g.left, int64(len(g.buf))))
		g.release(n)
		if g.left -= int64(n); g.left == 0 {
			g.endData()
		}
		return true, nil
	case gsChunkEnd:
		if len(g.buf) < 2 {
			return false, nil
		}
		if string(g.buf[:2]) != "\r\n" {
			return false, fmt.Errorf("%w: chunk data not followed by CRLF", errSmuggling)
		}
		g.release(2)
		g.state = gsChunkSize
		return true, nil
	case gsChunkSize:
		return g.chunkSize()
	case gsTrailers:
		end, err := blockEnd(g.buf)
		if err != nil || end < 0 {
			if end < 0 && err == nil && len(g.buf) > maxGuardHead {
				err = fmt.Errorf("%w: trailers over %d bytes", errSmuggling, maxGuardHead)
			}
			return false, err
		}
		g.release(end)
		g.state = g.after
		return true, nil
	}
	return false, nil
}

func (g *h1Guard) release(n int) {
	g.ready = append(g.ready, g.buf[:n]...)
	g.buf = g.buf[n:]
}

// head checks one request's header block.
func (g *h1Guard) head() (bool, error) {
	end, err := blockEnd(g.buf)
	if err != nil {
		return false, err
	}
	if end < 0 {
		if len(g.buf) > maxGuardHead {
			g.state = gsPass // net/http refuses it with 431
			return true, nil
		}
		return false, nil
	}
	block := string(g.buf[:end])
	req, err := parseFraming(block)
	if err != nil {
		return false, err
	}
	g.after = gsHead
	switch {
	case req.chunked && !req.expectContinue:
		g.held = append(g.held, g.buf[:end]...)
		g.buf = g.buf[end:]
		g.state = gsChunkSize
		return true, nil
	case req.chunked:
		g.state = gsChunkSize
	case req.length > 0:
		g.state, g.left = gsBody, req.length
	default:
		g.state = g.after
	}
	g.release(end)
	return true, nil
}

// chunkSize checks a chunk-size line and releases the header block held
// for it.
func (g *h1Guard) chunkSize() (bool, error) {
	i := bytes.IndexByte(g.buf, '\n')
	if i < 0 {
		if len(g.buf) > maxChunkSizeLine {
			return false, fmt.Errorf("%w: chunk-size line over %d bytes", errSmuggling, maxChunkSizeLine)
		}
		return false, nil
	}
	line := string(g.buf[:i+1])
	if !strings.HasSuffix(line, "\r\n") {
		return false, fmt.Errorf("%w: chunk-size line ends in a bare LF", errSmuggling)
	}
	size, _, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), ";")
	n, err := strconv.ParseUint(size, 16, 63)
	if err != nil || size == "" || len(size) > 15 || strings.ContainsAny(size, "+-xX ") {
		return false, fmt.Errorf("%w: invalid chunk size %q", errSmuggling, size)
	}
	g.ready = append(g.ready, g.held...)
	g.held = nil
	g.release(i + 1)
	if n == 0 {
		g.state = gsTrailers
	} else {
		g.state, g.left = gsChunkData, int64(n)
	}
	return true, nil
}

// blockEnd returns the length of the header block at the start of b (up to
// and including its empty line), -1 if b does not hold it all yet, or an
// error for a line ending in a bare LF.
func blockEnd(b []byte) (int, error) {
	start := 0
	for {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return -1, nil
		}
		lineEnd := start + i
		if lineEnd == start || b[lineEnd-1] != '\r' {
			return 0, fmt.Errorf("%w: a line ends in a bare LF", errSmuggling)
		}
		if lineEnd == start+1 { // "\r\n": the empty line
			return lineEnd + 1, nil
		}
		start = lineEnd + 1
	}
}

type framing struct {
	length                  int64
	chunked, expectContinue bool
}

// isHTTP1Version reports whether v is HTTP/1.x (net/http answers an
// unsupported x itself).
func isHTTP1Version(v string) bool {
	return len(v) == 8 && strings.HasPrefix(v, "HTTP/1.") && v[7] >= '0' && v[7] <= '9'
}

// parseFraming reads how a request's body is framed from its header block
// (CRLF line endings already checked), refusing ambiguous framing.
func parseFraming(block string) (framing, error) {
	var f framing
	lines := strings.Split(strings.TrimSuffix(block, "\r\n\r\n"), "\r\n")
	// An empty line before a request is ignored, as net/http does.
	if i := strings.LastIndexByte(lines[0], ' '); block != "\r\n" && !isHTTP1Version(lines[0][i+1:]) {
		return f, fmt.Errorf("%w: %q", errNotHTTP1, lines[0])
	}
	var lengths, encodings []string
	for _, line := range lines[1:] {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return f, fmt.Errorf("%w: obs-fold continuation line %q", errSmuggling, line)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue // net/http refuses it
		}
		value = strings.Trim(value, " \t")
		switch strings.ToLower(name) {
		case "content-length":
			lengths = append(lengths, value)
		case "transfer-encoding":
			encodings = append(encodings, value)
		case "expect":
			f.expectContinue = strings.EqualFold(value, "100-continue")
		}
	}
	switch {
	case len(lengths) > 0 && len(encodings) > 0:
		return f, fmt.Errorf("%w: both Content-Length and Transfer-Encoding", errSmuggling)
	case len(lengths) > 1:
		return f, fmt.Errorf("%w: %d Content-Length fields", errSmuggling, len(lengths))
	case len(encodings) > 1 || len(encodings) == 1 && !strings.EqualFold(encodings[0], "chunked"):
		return f, fmt.Errorf("%w: Transfer-Encoding %q (only chunked is accepted)", errSmuggling, strings.Join(encodings, ", "))
	case len(encodings) == 1:
		f.chunked = true
	case len(lengths) == 1:
		n, err := strconv.ParseInt(lengths[0], 10, 64)
		if err != nil || n < 0 || strings.TrimLeft(lengths[0], "0123456789") != "" {
			return f, fmt.Errorf("%w: Content-Length %q", errSmuggling, lengths[0])
		}
		f.length = n
	}
	return f, nil
}
