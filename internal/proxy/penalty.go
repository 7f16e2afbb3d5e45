package proxy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// penaltyBox makes a client cut off for an HTTP/2 flood wait before its
// next HTTP/2 connection is served: until a second after the cut (net/http
// takes up to a second to close a connection after its GOAWAY, so a
// shorter wait would pass unnoticed), doubling with each further cut, up
// to 5 s (half the header timeout the wait counts against); a minute
// without a cut clears the record. Budgets per connection alone do not
// bound the work: a client that reconnects as soon as it is cut off gets a
// fresh budget each time (the benchmark's Rapid Reset kept a core busy
// with some 20 000 streams a second over fresh connections).
//
// Connections already open are not touched, nor the client's HTTP/1.1
// connections: on the outbound side every connection comes from the pod's
// own address, and a well-behaved HTTP/1.1 client there must not wait for
// a flooding HTTP/2 one. Keyed by the client's address; safe for
// concurrent use; the zero value is ready.
type penaltyBox struct {
	mu sync.Mutex
	m  map[netip.Addr]penalty
}

type penalty struct {
	strikes int
	last    time.Time // the last cut
}

const (
	penaltyFirst   = time.Second
	penaltyMax     = 5 * time.Second
	penaltyForget  = time.Minute
	penaltyClients = 4096 // records kept at most
)

// strike records that a connection from a was cut off for flooding.
func (b *penaltyBox) strike(a net.Addr) {
	ip, ok := addrOf(a)
	if !ok || b == nil {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[netip.Addr]penalty{}
	}
	p := b.m[ip]
	if now.Sub(p.last) > penaltyForget {
		p.strikes = 0
	}
	p.strikes++
	p.last = now
	if _, known := b.m[ip]; !known && len(b.m) >= penaltyClients {
		b.forget(now)
	}
	b.m[ip] = p
}

// forget drops the records a minute old, and all of them if the box is
// still full: a flood from more addresses than it holds is left to the
// budgets.
func (b *penaltyBox) forget(now time.Time) {
	for ip, p := range b.m {
		if now.Sub(p.last) > penaltyForget {
			delete(b.m, ip)
		}
	}
	if len(b.m) >= penaltyClients {
		clear(b.m)
	}
}

// forgetAll clears every record.
func (b *penaltyBox) forgetAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.m)
}

// wait returns how long a new connection from a waits before it is served.
func (b *penaltyBox) wait(a net.Addr) time.Duration {
	ip, ok := addrOf(a)
	if !ok || b == nil {
		return 0
	}
	b.mu.Lock()
	p, struck := b.m[ip]
	b.mu.Unlock()
	if !struck {
		return 0
	}
	d := min(penaltyFirst<<min(p.strikes-1, 3), penaltyMax) // 1 s << 3 is past the cap
	return max(0, time.Until(p.last.Add(d)))
}

// serveAfterPenalty holds a new HTTP/2 connection from a until the
// client's penalty, if any, has passed.
func (b *penaltyBox) serveAfterPenalty(a net.Addr) {
	if d := b.wait(a); d > 0 {
		time.Sleep(d)
	}
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	return t.AddrPort().Addr().Unmap(), true
}
