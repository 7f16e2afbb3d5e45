package proxy

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
)

// meshPool holds the engine's HTTP/2 connections to other sidecars, by
// endpoint address. A request goes on the first connection with room; a
// new one is dialled only when every one is at the peer's stream limit
// (or going away), and one dial at a time per endpoint. Safe for
// concurrent use.
type meshPool struct {
	// dial opens an mTLS connection to an endpoint's sidecar, verifying
	// the identity the config names for it, with "h2" negotiated.
	dial func(addr string) (net.Conn, error)
	cfg  h2.Config

	mu      sync.Mutex
	conns   map[string][]*h2.Conn // guarded by mu
	dialing map[string]*dialCall  // guarded by mu
}

// upstream is the Value of every stream a meshPool opens: it gets the
// stream's events (the response), on the connection's reader goroutine.
type upstream interface {
	upHeaders(s *h2.Stream, f *http2.MetaHeadersFrame, end bool)
	upData(s *h2.Stream, p []byte, end bool)
	upClosed(s *h2.Stream, err error)
}

// headHolder is an upstream that may hold a response head back, to go
// out in one write with the body that usually follows it in the same
// read; flushHeld sends what it holds.
type headHolder interface {
	holding() bool
	flushHeld()
}

// upstreamHandler hands a pooled connection's stream events to the
// streams' Values, on its reader goroutine. Once the reader has handled
// all it read, the heads still held go out (h2.Drainer).
type upstreamHandler struct {
	held []headHolder
}

func (h *upstreamHandler) Headers(s *h2.Stream, f *http2.MetaHeadersFrame, end bool) {
	u := s.Value.(upstream)
	u.upHeaders(s, f, end)
	if hh, ok := u.(headHolder); ok && hh.holding() {
		h.held = append(h.held, hh)
	}
}

func (*upstreamHandler) Data(s *h2.Stream, p []byte, end bool) { s.Value.(upstream).upData(s, p, end) }

func (*upstreamHandler) Closed(s *h2.Stream, err error) { s.Value.(upstream).upClosed(s, err) }

func (h *upstreamHandler) Drained() {
	for i, hh := range h.held {
		hh.flushHeld()
		h.held[i] = nil
	}
	h.held = h.held[:0]
}

// dialCall is a dial in progress that other requests wait for.
type dialCall struct {
	done chan struct{}
	conn *h2.Conn
	err  error
}

// stream opens a stream to addr with a request's header section (see
// h2.Conn.NewStream).
func (p *meshPool) stream(addr string, value upstream, head, end bool, fields ...h2.Field) (*h2.Stream, error) {
	for attempt := 0; ; attempt++ {
		for _, c := range p.open(addr) {
			st, err := c.NewStream(value, head, end, fields...)
			if err == nil {
				return st, nil
			}
			if !errors.Is(err, h2.ErrMaxStreams) && !errors.Is(err, h2.ErrGoingAway) {
				continue // the connection ended meanwhile; Run removes it
			}
		}
		if attempt > 0 {
			// A fresh connection could not take the stream either.
			return nil, errors.New("no connection to " + addr + " takes a new stream")
		}
		if _, err := p.connect(addr); err != nil {
			return nil, err
		}
	}
}

// open returns addr's connections that can take a stream now.
func (p *meshPool) open(addr string) []*h2.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*h2.Conn
	for _, c := range p.conns[addr] {
		if c.Open() {
			out = append(out, c)
		}
	}
	return out
}

// connect dials a new connection to addr, or waits for the dial already
// under way.
func (p *meshPool) connect(addr string) (*h2.Conn, error) {
	p.mu.Lock()
	if p.dialing == nil {
		p.dialing, p.conns = map[string]*dialCall{}, map[string][]*h2.Conn{}
	}
	if d := p.dialing[addr]; d != nil {
		p.mu.Unlock()
		<-d.done
		return d.conn, d.err
	}
	d := &dialCall{done: make(chan struct{})}
	p.dialing[addr] = d
	p.mu.Unlock()

	// Streams may open before the peer's SETTINGS arrive: sidecars
	// allow 100 at once, the limit assumed until then.
	raw, err := p.dial(addr)
	if err == nil {
		d.conn = h2.NewClientConn(raw, p.cfg, &upstreamHandler{})
	}
	d.err = err
	p.mu.Lock()
	delete(p.dialing, addr)
	if d.conn != nil {
		p.conns[addr] = append(p.conns[addr], d.conn)
		go p.run(addr, d.conn)
	}
	p.mu.Unlock()
	close(d.done)
	return d.conn, d.err
}

// run reads c until it ends, then forgets it.
func (p *meshPool) run(addr string, c *h2.Conn) {
	_ = c.Run()
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[addr]
	for i, x := range list {
		if x == c {
			p.conns[addr] = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(p.conns[addr]) == 0 {
		delete(p.conns, addr)
	}
}

// retire drains the connections to the endpoints keep does not hold (they
// left the config): streams in flight finish, new ones go elsewhere.
func (p *meshPool) retire(keep func(addr string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, list := range p.conns {
		if !keep(addr) {
			for _, c := range list {
				go c.GoAway()
			}
		}
	}
}

// close closes every connection at once.
func (p *meshPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.conns {
		for _, c := range list {
			c.Close()
		}
	}
}

var (
	_ upstream = (*h1Exchange)(nil)
	_ upstream = (*relay)(nil)
)
