package proxy

import (
	"io"
	"log/slog"
	"net"
	"time"
)

// h2Guard watches the frames a client sends on an HTTP/2 connection
// before net/http's server reads them, and ends connections that flood it
// with cheap frames net/http answers without limit: stream resets (Rapid
// Reset, CVE-2023-44487), PINGs, SETTINGS, and header blocks (HPACK bombs).
// Past a budget per second it passes on a PING on stream 1, which net/http
// answers with GOAWAY (PROTOCOL_ERROR) and a closed connection. Everything
// else is passed through untouched, frame by frame.
type h2Guard struct {
	src    io.Reader
	from   net.Addr
	budget *h2Budgets
	out    []byte // to return before reading on
	hdr    []byte // the frame header being read
	pre    int    // preface bytes still to pass
	skip   int    // payload bytes of the current frame still to pass
	dead   bool
	win    time.Time
	count  [frameTypes]int
	block  int              // header block bytes (HEADERS, CONTINUATION) this second
	clock  func() time.Time // nil: time.Now
}

const frameTypes = 10

// h2Budgets are what one connection may send per second.
type h2Budgets struct {
	frames [frameTypes]int // by frame type; 0: no limit
	block  int             // header block bytes
}

// appBudgets apply to an app's own connections, and are generous for real
// clients: a browser cancels a few streams; gRPC keepalive pings every few
// seconds and its bandwidth estimator more, so each request earns two more
// PINGs (see Read). The header-block budget is a thousand requests a second
// with 1 KiB of headers HPACK could not index (repeated headers cost a byte
// or two once indexed). An HPACK bomb sends blocks that are cheap on the
// wire and expensive to decode (each byte a reference to a large table
// entry); with 4 MiB a bomb still held a core for most of a second per
// connection.
var appBudgets = h2Budgets{
	frames: [frameTypes]int{
		0x3: 1000, // RST_STREAM
		0x4: 100,  // SETTINGS (not ACKs)
		0x6: 100,  // PING (not ACKs), plus two per HEADERS
	},
	block: 1 << 20,
}

// peerBudgets apply to another sidecar's pooled connection, which carries
// the requests, cancellations and headers of every app connection behind
// it: resets and header blocks get sixteen times the room (an app's
// connections are each held to appBudgets by its own sidecar).
var peerBudgets = h2Budgets{
	frames: [frameTypes]int{0x3: 16000, 0x4: 100, 0x6: 100},
	block:  16 << 20,
}

// refusedFrame is a PING on stream 1: a connection error for net/http.
var refusedFrame = []byte{0, 0, 8, 0x6, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func newH2Guard(src io.Reader, from net.Addr, budget *h2Budgets) *h2Guard {
	return &h2Guard{src: src, from: from, budget: budget, pre: len(clientPreface)}
}

func (g *h2Guard) Read(p []byte) (int, error) {
	if len(g.out) > 0 {
		n := copy(p, g.out)
		g.out = g.out[n:]
		return n, nil
	}
	if g.dead {
		return 0, io.EOF
	}
	// The preface and frame payloads pass straight through.
	if g.pre > 0 || g.skip > 0 {
		k, err := g.src.Read(p[:min(len(p), g.pre+g.skip)])
		d := min(k, g.pre)
		g.pre -= d
		g.skip -= k - d
		return k, err
	}
	// At a frame boundary: read the 9-byte header whole, then judge it.
	var b [9]byte
	k, err := g.src.Read(b[:9-len(g.hdr)])
	g.hdr = append(g.hdr, b[:k]...)
	if len(g.hdr) < 9 {
		if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
			return 0, err // nothing to pass yet; a timeout keeps what was read
		}
		// The stream ended mid-header: pass what there is, then end.
		g.out, g.hdr, g.dead = g.hdr, nil, true
		return g.Read(p)
	}
	hdr := g.hdr
	g.hdr = nil
	typ, flags := hdr[3], hdr[4]
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if int(typ) < frameTypes && flags&0x1 == 0 || typ == 0x1 { // 0x1: ACK, or END_STREAM on HEADERS
		if now := g.now(); now.Sub(g.win) > time.Second {
			g.win, g.count, g.block = now, [frameTypes]int{}, 0
		}
		g.count[typ]++
		if typ == 0x1 || typ == 0x9 {
			if g.block += length; g.block > g.budget.block {
				return g.refuse(p, typ, g.budget.block)
			}
		}
		// Clients ping in proportion to the responses they get (gRPC's
		// bandwidth estimator pings as data arrives): each request earns
		// two more PINGs.
		budget := g.budget.frames[typ]
		if typ == 0x6 {
			budget += 2 * g.count[0x1]
		}
		if budget > 0 && g.count[typ] > budget {
			return g.refuse(p, typ, g.budget.frames[typ])
		}
	}
	g.skip = length
	g.out = hdr
	n := copy(p, g.out)
	g.out = g.out[n:]
	return n, err
}

func (g *h2Guard) now() time.Time {
	if g.clock != nil {
		return g.clock()
	}
	return time.Now()
}

// refuse ends the connection: what follows is the refusing PING, then EOF.
func (g *h2Guard) refuse(p []byte, typ byte, budget int) (int, error) {
	slog.Info("HTTP/2 flood: closing the connection", "from", g.from, "frameType", typ, "budgetPerSecond", budget)
	g.dead, g.out = true, refusedFrame
	return g.Read(p)
}
