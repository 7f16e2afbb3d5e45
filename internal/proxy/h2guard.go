package proxy

import (
	"io"
	"log/slog"
	"net"
	"time"
)

// h2Guard watches the frames a client sends on a cleartext HTTP/2
// connection before net/http's server reads them, and ends connections
// that flood it with cheap frames net/http answers without limit: stream
// resets (Rapid Reset, CVE-2023-44487), PINGs, SETTINGS, and header blocks
// (HPACK bombs). Past a budget
// per second it passes on a PING on stream 1, which net/http answers with
// GOAWAY (PROTOCOL_ERROR) and a closed connection. Everything else is
// passed through untouched, frame by frame.
type h2Guard struct {
	src   io.Reader
	from  net.Addr
	out   []byte // to return before reading on
	hdr   []byte // the frame header being read
	pre   int    // preface bytes still to pass
	skip  int    // payload bytes of the current frame still to pass
	dead  bool
	win   time.Time
	count [frameTypes]int
	block int // header block bytes (HEADERS, CONTINUATION) this second
}

const frameTypes = 10

// Budgets per second and connection, generous for real clients (a browser
// cancels a few streams; gRPC keepalive pings every few seconds, its
// bandwidth estimator more, see Read).
var h2Budget = [frameTypes]int{
	0x3: 1000, // RST_STREAM
	0x4: 100,  // SETTINGS (not ACKs)
	0x6: 100,  // PING (not ACKs), plus two per HEADERS
}

// headerBlockBudget is the header block bytes a connection may send per
// second: a thousand requests a second with 4 KiB of headers HPACK could
// not index. An HPACK bomb sends blocks that are cheap on the wire and
// expensive to decode (each byte a reference to a large table entry); past
// the budget the connection ends like any other flood.
const headerBlockBudget = 4 << 20

// refusedFrame is a PING on stream 1: a connection error for net/http.
var refusedFrame = []byte{0, 0, 8, 0x6, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func newH2Guard(src io.Reader, from net.Addr) *h2Guard {
	return &h2Guard{src: src, from: from, pre: len(clientPreface)}
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
		if now := time.Now(); now.Sub(g.win) > time.Second {
			g.win, g.count, g.block = now, [frameTypes]int{}, 0
		}
		g.count[typ]++
		if typ == 0x1 || typ == 0x9 {
			if g.block += length; g.block > headerBlockBudget {
				return g.refuse(p, typ, headerBlockBudget)
			}
		}
		// Clients ping in proportion to the responses they get (gRPC's
		// bandwidth estimator pings as data arrives): each request earns
		// two more PINGs.
		budget := h2Budget[typ]
		if typ == 0x6 {
			budget += 2 * g.count[0x1]
		}
		if budget > 0 && g.count[typ] > budget {
			return g.refuse(p, typ, h2Budget[typ])
		}
	}
	g.skip = length
	g.out = hdr
	n := copy(p, g.out)
	g.out = g.out[n:]
	return n, err
}

// refuse ends the connection: what follows is the refusing PING, then EOF.
func (g *h2Guard) refuse(p []byte, typ byte, budget int) (int, error) {
	slog.Info("HTTP/2 flood: closing the connection", "from", g.from, "frameType", typ, "budgetPerSecond", budget)
	g.dead, g.out = true, refusedFrame
	return g.Read(p)
}
