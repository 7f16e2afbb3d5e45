package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// tunnels tracks the connections served outside an http.Server (TCP
// tunnels and passthrough), so a shutdown can wait for them and then close
// what is left.
type tunnels = connSet[net.Conn]

// connSet is a set of open connections for a drain: once it drains it
// takes no more.
type connSet[C interface {
	comparable
	Close() error
}] struct {
	mu       sync.Mutex
	conns    map[C]struct{}
	draining bool
}

// add registers c, or reports false when draining (the caller then closes
// c instead of serving it).
func (t *connSet[C]) add(c C) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	if t.conns == nil {
		t.conns = map[C]struct{}{}
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *connSet[C]) remove(c C) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// shutdown refuses new connections, calls begin (if set) on each open one
// to start its drain, waits until they end or ctx does, then closes the
// rest.
func (t *connSet[C]) shutdown(ctx context.Context, begin func(C)) error {
	t.mu.Lock()
	t.draining = true
	var open []C
	if begin != nil {
		for c := range t.conns {
			open = append(open, c)
		}
	}
	t.mu.Unlock()
	for _, c := range open {
		begin(c)
	}
	return awaitEmpty(ctx, &t.mu, func() int { return len(t.conns) }, t.closeAllLocked)
}

// close refuses new connections and closes the open ones at once.
func (t *connSet[C]) close() {
	t.mu.Lock()
	t.draining = true
	t.closeAllLocked()
	t.mu.Unlock()
}

func (t *connSet[C]) closeAllLocked() {
	for c := range t.conns {
		c.Close()
	}
}

// awaitEmpty waits until count, read under mu, is 0, or until ctx ends:
// then it calls closeAll under mu and returns ctx's error.
func awaitEmpty(ctx context.Context, mu *sync.Mutex, count func() int, closeAll func()) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		mu.Lock()
		n := count()
		mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			mu.Lock()
			closeAll()
			mu.Unlock()
			return ctx.Err()
		}
	}
}

// drain shuts servers and tunnels down gracefully until ctx ends, then
// closes whatever is still open. It returns ctx's error when it had to cut
// something off.
func drain(ctx context.Context, t *tunnels, servers ...*http.Server) error {
	var wg sync.WaitGroup
	errs := make([]error, len(servers)+1)
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = s.Shutdown(ctx); errs[i] != nil {
				s.Close()
			}
		}()
	}
	errs[len(servers)] = t.shutdown(ctx, nil)
	wg.Wait()
	return errors.Join(errs...)
}

// connLimit bounds the connections one side of the proxy holds at once.
// Past it a new connection is closed at once, so a flood of (idle)
// connections cannot exhaust memory or file descriptors; the timeouts then
// clear the flood and well-behaved clients get in again.
type connLimit struct {
	max  atomic.Int64 // 0: no limit
	open atomic.Int64
	// perSource, when set, also caps what one client address holds: a
	// quarter of max (the inbound side, where clients are many; the
	// outbound side's one client is the app).
	perSource bool
	mu        sync.Mutex
	bySource  map[netip.Addr]int64 // guarded by mu
}

// admit returns c wrapped to give its slot back when closed, or nil, with
// c closed, when the limit (or its address's share) is reached.
func (l *connLimit) admit(c net.Conn) net.Conn {
	limit := l.max.Load()
	if limit <= 0 {
		return c
	}
	if l.open.Add(1) > limit {
		l.open.Add(-1)
		c.Close()
		return nil
	}
	lc := &limitedConn{Conn: c, l: l}
	if l.perSource {
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			lc.src = ap.Addr().Unmap()
		}
		l.mu.Lock()
		if l.bySource == nil {
			l.bySource = map[netip.Addr]int64{}
		}
		over := l.bySource[lc.src] >= max(limit/4, 1)
		if !over {
			l.bySource[lc.src]++
		}
		l.mu.Unlock()
		if over {
			l.open.Add(-1)
			c.Close()
			return nil
		}
	}
	return lc
}

type limitedConn struct {
	net.Conn
	l    *connLimit
	src  netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.open.Add(-1)
		if c.l.perSource {
			c.l.mu.Lock()
			if c.l.bySource[c.src]--; c.l.bySource[c.src] <= 0 {
				delete(c.l.bySource, c.src)
			}
			c.l.mu.Unlock()
		}
	})
	return c.Conn.Close()
}

// CloseWrite, ReadFrom and WriteTo keep half-close and the kernel's
// zero-copy paths of the connection underneath.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }
func (c *limitedConn) WriteTo(w io.Writer) (int64, error)  { return io.Copy(w, c.Conn) }

// idleWatch closes its connections once no byte was read on any of them
// for its timeout.
type idleWatch struct {
	last atomic.Int64 // unix nanoseconds of the last read
	done chan struct{}
	once sync.Once
}

// closeWhenIdle starts watching conns; call the result to stop, and read
// through track so reads count as activity.
func closeWhenIdle(timeout time.Duration, conns ...net.Conn) *idleWatch {
	w := &idleWatch{done: make(chan struct{})}
	w.last.Store(time.Now().UnixNano())
	go func() {
		tick := time.NewTicker(max(timeout/4, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case now := <-tick.C:
				if now.Sub(time.Unix(0, w.last.Load())) >= timeout {
					for _, c := range conns {
						c.Close()
					}
					return
				}
			}
		}
	}()
	return w
}

func (w *idleWatch) stop() { w.once.Do(func() { close(w.done) }) }

// track wraps c so its reads count as activity.
func (w *idleWatch) track(c net.Conn) net.Conn { return &activeConn{Conn: c, w: w} }

type activeConn struct {
	net.Conn
	w *idleWatch
}

func (c *activeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// CloseWrite keeps half-close working through the wrapper.
func (c *activeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
