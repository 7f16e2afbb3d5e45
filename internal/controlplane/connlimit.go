package controlplane

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// limitListener caps the connections open at once on a listener, in all
// and per source address, so no one client (a compromised pod, anything
// outside the mesh) can hold the control plane's sockets and memory. A
// connection over a cap is closed at once; refusals are logged at most
// once a minute, with their count.
type limitListener struct {
	net.Listener
	max, perSource int // 0: no cap

	mu       sync.Mutex
	open     int            // guarded by mu
	bySource map[string]int // guarded by mu
	refused  int            // guarded by mu: since the last log line
	logged   time.Time      // guarded by mu
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
		l.refused++
		if time.Since(l.logged) > time.Minute {
			slog.Warn("connections refused: over the cap", "total", l.max, "perSource", l.perSource, "lastSource", src, "refused", l.refused)
			l.refused, l.logged = 0, time.Now()
		}
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
