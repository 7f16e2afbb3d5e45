package proxy

import (
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/h2"
)

// upload carries a request body from the caller's stream to the app's
// HTTP/1.1 connection without a goroutine of its own: the mesh
// connection's reader writes what the socket takes at once, and a
// goroutine is started only for what it does not take, ending once that
// is written. Bytes that arrive before the request head is on a
// connection wait here. What waits is bounded by the stream's receive
// window: each byte goes back to the caller's window only once it is
// written (or dropped, when the exchange ends early).
type upload struct {
	s       *h2.Stream
	chunked bool          // no Content-Length: the body goes chunked
	idle    time.Duration // a write's bound on making no progress; 0: none

	mu       sync.Mutex
	conn     net.Conn // nil until the head is on a connection
	out      []byte   // framed for HTTP/1.1, not yet written
	raw      []byte   // chunked: body bytes not framed yet (one chunk per write, however the caller split them)
	last     []byte   // chunked: the last chunk and trailers, once the caller ended
	credit   int      // DATA bytes of out and raw, to give back once written
	flushing bool     // a write is under way; others only queue
	ended    bool     // the caller's last bytes are queued or written
	broken   bool     // abandoned: nothing more is written
	doneAt   time.Time
	trailers []string // the trailer fields the request declared (lower case)
}

// push queues what the caller sent (on the reader goroutine): body bytes,
// and at the end the chunked body's last chunk with its trailers (a body
// with a length cannot carry them; they are dropped).
func (u *upload) push(p []byte, end bool, trailers []h2.Field) {
	u.mu.Lock()
	if u.broken {
		u.mu.Unlock()
		u.s.Consumed(len(p))
		return
	}
	if u.chunked {
		u.raw = append(u.raw, p...)
	} else {
		u.out = append(u.out, p...)
	}
	u.credit += len(p)
	if end {
		u.ended = true
		if u.chunked {
			u.last = append(u.last, "0\r\n"...)
			for _, f := range trailers {
				if u.passTrailer(f.Name) {
					u.last = append(append(append(append(u.last, f.Name...), ": "...), f.Value...), "\r\n"...)
				}
			}
			u.last = append(u.last, "\r\n"...)
		}
	}
	u.mu.Unlock()
	u.kick()
}

// passTrailer reports whether a request trailer goes to the app: only
// one the request's Trailer field announced, and never one that frames
// the message, routes it, or carries credentials or the proxy's own
// identity fields (RFC 9110 6.5.1; an app that merges trailers into the
// header must not find a forged XFCC there).
func (u *upload) passTrailer(name string) bool {
	switch name {
	case "content-length", "transfer-encoding", "host", "trailer", "authorization", "proxy-authorization",
		"cookie", "set-cookie", "content-type", "content-encoding", "content-range", "expect", "max-forwards",
		peerHeaderField, xfccField:
		return false
	}
	return !hopByHopField(name) && slices.Contains(u.trailers, name)
}

// queuedLocked reports whether anything waits to be written (mu held).
func (u *upload) queuedLocked() bool { return len(u.out) > 0 || len(u.raw) > 0 || u.last != nil }

// takeLocked takes what waits to be written (mu held): the chunked body's
// bytes framed as one chunk, then its last chunk once the caller ended.
func (u *upload) takeLocked() (out []byte, credit int) {
	if len(u.raw) > 0 {
		u.out = append(strconv.AppendInt(u.out, int64(len(u.raw)), 16), "\r\n"...)
		u.out = append(append(u.out, u.raw...), "\r\n"...)
		u.raw = u.raw[:0]
	}
	if u.last != nil {
		u.out, u.last = append(u.out, u.last...), nil
	}
	out, credit = u.out, u.credit
	u.out, u.credit = nil, 0
	return out, credit
}

// attach starts writing to c, on which the request head has been
// written.
func (u *upload) attach(c net.Conn) {
	u.mu.Lock()
	u.conn = c
	u.mu.Unlock()
	u.kick()
}

// kick writes what is queued, as far as the socket takes it now; a
// goroutine writes the rest.
func (u *upload) kick() {
	u.mu.Lock()
	if u.conn == nil || u.flushing || u.broken {
		u.mu.Unlock()
		return
	}
	u.flushing = true
	for u.queuedLocked() {
		out, credit := u.takeLocked()
		u.mu.Unlock()
		n, err := tryWrite(u.conn, out)
		if err != nil {
			u.fail(credit, err)
			return
		}
		if n < len(out) {
			u.mu.Lock()
			if u.broken { // abandoned meanwhile
				u.mu.Unlock()
				u.s.Consumed(credit)
				return
			}
			u.out = append(out[n:len(out):len(out)], u.out...)
			u.credit += credit
			u.mu.Unlock()
			go u.flush()
			return
		}
		u.s.Consumed(credit)
		u.mu.Lock()
	}
	u.doneLocked()
	u.mu.Unlock()
}

// flush writes what is queued, waiting for room, until nothing is.
func (u *upload) flush() {
	for {
		u.mu.Lock()
		if u.broken {
			u.mu.Unlock()
			u.abandon() // gives back what is queued
			return
		}
		if !u.queuedLocked() {
			u.doneLocked()
			u.mu.Unlock()
			return
		}
		out, credit := u.takeLocked()
		u.mu.Unlock()
		if err := writeProgressing(u.conn, out, u.idle); err != nil {
			u.fail(credit, err)
			return
		}
		u.s.Consumed(credit)
	}
}

// doneLocked ends a write round (mu held), noting when the body's last
// byte went.
func (u *upload) doneLocked() {
	u.flushing = false
	if u.ended && !u.queuedLocked() && u.doneAt.IsZero() {
		u.doneAt = time.Now()
	}
}

// fail abandons an upload whose write failed with err, with credit bytes
// of it unwritten. A write that stalled closes the connection (its reader
// then reports the failure); one the app refused (it closed or reset the
// connection, perhaps after answering without reading the whole body)
// leaves the reader to read what the app sent.
func (u *upload) fail(credit int, err error) {
	u.s.Consumed(credit)
	u.abandon()
	if isTimeout(err) {
		u.conn.Close()
	}
}

// abandon stops the upload: what is queued is dropped and its window
// given back, as is everything the caller sends from now on.
func (u *upload) abandon() {
	u.mu.Lock()
	credit := u.credit
	u.out, u.raw, u.last, u.credit, u.broken = nil, nil, nil, 0, true
	u.flushing = false
	u.mu.Unlock()
	u.s.Consumed(credit)
}

// complete reports whether the whole body is written.
func (u *upload) complete() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return !u.doneAt.IsZero()
}

// headWait is how much longer to wait for the response head: the full
// wait from when the body's last byte went out, as net/http's
// ResponseHeaderTimeout counts; while the body is still going, the wait
// goes on (a stalled write ends it instead).
func (u *upload) headWait() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.broken {
		return 0
	}
	if u.doneAt.IsZero() {
		return appHeadTimeout
	}
	return appHeadTimeout - time.Since(u.doneAt)
}

// abandonIfAny abandons u if there is one.
func (u *upload) abandonIfAny() {
	if u != nil {
		u.abandon()
	}
}

// headWait is how much longer x waits for its response head after the
// first wait ran out: more only while its body is being written, or
// was written less than the wait ago.
func (x *appExchange) headWait() time.Duration {
	if x.up == nil {
		return 0
	}
	return x.up.headWait()
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
