package controlplane

import (
	"log/slog"
	"net"
	"sync"
)

// limitListener caps the connections open at once on a listener, in all
// and per source address, so no one client (a compromised pod, anything
// outside the mesh) can hold the control plane's sockets and memory. A
// connection over a cap is closed at once (and logged at most once a
// second).
type limitListener struct {
	net.Listener
	max, perSource int // 0: no cap

	mu       sync.Mutex
	open     int            // guarded by mu
	bySource map[string]int // guarded by mu
}

func newLimitListener(ln net.Listener, max, perSource int) *limitListener {
	return &limitListener{Listener: ln, max: max, perSource: perSource, bySource: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c)
		if l.admit(src) {
			return &limitedConn{Conn: c, l: l, src: src}, nil
		}
		c.Close()
	}
}

func (l *limitListener) admit(src string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if (l.max > 0 && l.open >= l.max) || (l.perSource > 0 && l.bySource[src] >= l.perSource) {
		refusals.Log(slog.LevelWarn, "connection refused: over the cap", "total", l.max, "perSource", l.perSource, "from", src)
		return false
	}
	l.open++
	l.bySource[src]++
	return true
}

func (l *limitListener) release(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

func sourceOf(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	src  string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}
