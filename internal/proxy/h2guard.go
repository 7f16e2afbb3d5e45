package proxy

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strconv"
	"time"

	"golang.org/x/net/http2/hpack"
)

// h2Guard watches the frames a client sends on an HTTP/2 connection
// before net/http's server reads them. It ends connections that flood it
// with cheap frames net/http answers without limit: stream resets (Rapid
// Reset, CVE-2023-44487), PINGs, SETTINGS, and header blocks (HPACK bombs).
// It decodes every header block (its own HPACK decoder, kept in step with
// net/http's) and ends the connection on a malformed request net/http would
// answer (RFC 9113 8.2.2: connection-specific fields, TE other than
// "trailers"), as Envoy does by default, and on a block that decodes to
// over maxDecodedBlock. It passes a SETTINGS frame that repeats a setting
// as the same settings without repeats (net/http hangs up on repeats; RFC
// 9113 6.5.3 says process them in order). To end a connection it passes on
// a PING on stream 1, which net/http answers with GOAWAY (PROTOCOL_ERROR)
// and a closed connection. Everything else is passed through untouched,
// frame by frame; only header blocks and SETTINGS are held until whole.
type h2Guard struct {
	src     io.Reader
	from    net.Addr
	budget  *h2Budgets
	penalty *penaltyBox // records the client when a flood is cut off; nil: none
	out     []byte      // to return before reading on
	hdr     []byte      // the frame header being read
	pre     int         // preface bytes still to pass
	skip    int         // payload bytes of the current frame still to pass
	dead    bool
	win     time.Time
	count   [frameTypes]int
	block   int              // header block bytes (HEADERS, CONTINUATION) this second
	clock   func() time.Time // nil: time.Now

	held    []byte         // a header-block or SETTINGS frame being read whole
	need    int            // its length with the frame header; 0: none
	dec     *hpack.Decoder // nil: not decoding (yet, or any more)
	bad     string         // why the header block being decoded is malformed
	listLen int            // decoded size of that block's fields
}

// maxDecodedBlock ends a connection whose header block decodes to more:
// four times what net/http answers with 431, so only a block built to be
// expensive to decode (an HPACK bomb: each byte a reference to a table
// entry) reaches it; a client that merely sends too much gets its 431.
const maxDecodedBlock = 256 << 10

// maxHeldFrame is the largest frame the guard holds to inspect: the
// listeners' SETTINGS_MAX_FRAME_SIZE (net/http refuses larger frames).
const maxHeldFrame = 16 << 10

// Frame types and flags the guard looks into.
const (
	frameHeaders      = 0x1
	frameSettings     = 0x4
	frameContinuation = 0x9
	flagAck           = 0x1
	flagEndHeaders    = 0x4
	flagPadded        = 0x8
	flagPriority      = 0x20
)

const frameTypes = 10

// h2Budgets are what one connection may send per second.
type h2Budgets struct {
	frames [frameTypes]int // by frame type; 0: no limit
	block  int             // header block bytes, as they came (the guard)
	// decoded is header bytes as they decode (RFC 9113's size: name +
	// value + 32 per field), which the engine counts: a block's size on
	// the wire says little once HPACK has indexed its fields. It bounds
	// the work a connection's header sections cost each second, bombs or
	// not; a single section past four times MaxHeaderListSize ends the
	// connection at once.
	decoded int
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
	// 16 MiB: 35 000 requests a second of the 450 bytes a sidecar's
	// request decodes to, more than one connection's share of a core.
	decoded: 16 << 20,
}

// peerBudgets apply to another sidecar's pooled connection, which carries
// the requests, cancellations and headers of every app connection behind
// it: resets and header blocks get sixteen times the room (an app's
// connections are each held to appBudgets by its own sidecar).
var peerBudgets = h2Budgets{
	frames: [frameTypes]int{0x3: 16000, 0x4: 100, 0x6: 100},
	block:  16 << 20,
	// 64 MiB: at 16 MiB the pair's mesh connection was cut as a flood at
	// 37 000 requests a second of 450 bytes (BenchmarkPairHTTP1).
	decoded: 64 << 20,
}

// refusedFrame is a PING on stream 1: a connection error for net/http.
var refusedFrame = []byte{0, 0, 8, 0x6, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func newH2Guard(src io.Reader, from net.Addr, budget *h2Budgets, penalty *penaltyBox) *h2Guard {
	g := &h2Guard{src: src, from: from, budget: budget, penalty: penalty, pre: len(clientPreface)}
	// net/http's decoder has the default 4096-byte dynamic table, and a
	// string longer than its header limit ends the connection anyway.
	g.dec = hpack.NewDecoder(4096, g.field)
	g.dec.SetMaxStringLength(64 << 10)
	return g
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
	if g.need > 0 {
		return g.readHeld(p)
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
		if typ == frameHeaders || typ == frameContinuation {
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
	if g.holds(typ, flags, length) {
		g.held = append(g.held[:0], hdr...)
		g.need = 9 + length
		return g.readHeld(p)
	}
	if typ == frameHeaders || typ == frameContinuation {
		g.dec = nil // a frame net/http refuses: the connection is ending
	}
	g.skip = length
	g.out = hdr
	n := copy(p, g.out)
	g.out = g.out[n:]
	return n, err
}

// holds reports whether a frame is read whole and inspected before it is
// passed on: header blocks while decoding, and SETTINGS.
func (g *h2Guard) holds(typ, flags byte, length int) bool {
	switch {
	case length > maxHeldFrame:
		return false
	case typ == frameHeaders || typ == frameContinuation:
		return g.dec != nil
	case typ == frameSettings:
		return flags&flagAck == 0 && length%6 == 0
	}
	return false
}

// readHeld reads the rest of the held frame, then passes it on (SETTINGS
// without repeats) or ends the connection.
func (g *h2Guard) readHeld(p []byte) (int, error) {
	for len(g.held) < g.need {
		if cap(g.held) < g.need {
			g.held = append(make([]byte, 0, g.need), g.held...)
		}
		k, err := g.src.Read(g.held[len(g.held):g.need])
		g.held = g.held[:len(g.held)+k]
		if err != nil && len(g.held) < g.need {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return 0, err // a timeout keeps what was read
			}
			// The stream ended mid-frame: pass what there is, then end.
			g.out, g.need, g.dead = g.held, 0, true
			return g.Read(p)
		}
	}
	g.need = 0
	frame := g.held
	switch frame[3] {
	case frameSettings:
		frame = withoutRepeats(frame)
	default:
		if reason := g.decode(frame); reason != "" {
			if g.listLen > maxDecodedBlock {
				g.penalty.strike(g.from) // a flood, not a broken client
			}
			slog.Info("malformed HTTP/2 request: closing the connection", "from", g.from, "reason", reason)
			g.dead, g.out = true, refusedFrame
			return g.Read(p)
		}
	}
	g.out = frame
	return g.Read(p)
}

// decode feeds a HEADERS or CONTINUATION frame's block fragment to the
// decoder and returns why the request is malformed, once its block ends.
// A block HPACK cannot decode is net/http's to refuse: decoding stops.
func (g *h2Guard) decode(frame []byte) string {
	flags, frag := frame[4], frame[9:]
	if frame[3] == frameHeaders {
		g.bad, g.listLen = "", 0
		var ok bool
		if frag, ok = headersFragment(flags, frag); !ok {
			g.dec = nil // malformed padding or priority: net/http refuses it
			return ""
		}
	}
	if _, err := g.dec.Write(frag); err != nil {
		g.dec = nil
		return ""
	}
	if g.listLen > maxDecodedBlock {
		return "header block decodes to over " + strconv.Itoa(maxDecodedBlock>>10) + " KiB (an HPACK bomb)"
	}
	if flags&flagEndHeaders == 0 {
		return ""
	}
	if err := g.dec.Close(); err != nil {
		g.dec = nil
		return ""
	}
	return g.bad
}

// headersFragment returns a HEADERS payload's header block fragment,
// without its padding and priority fields; false if those do not fit.
func headersFragment(flags byte, p []byte) ([]byte, bool) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(p) == 0 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// field checks one decoded header field of a request (or its trailers).
// Past net/http's header limit it stops looking: net/http answers 431.
func (g *h2Guard) field(f hpack.HeaderField) {
	if g.listLen += len(f.Name) + len(f.Value) + 32; g.bad != "" || g.listLen > 64<<10 {
		return
	}
	switch f.Name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		g.bad = "connection-specific header field " + strconv.Quote(f.Name) + " (not allowed in HTTP/2)"
	case "te":
		if f.Value != "trailers" {
			g.bad = `header field "te" other than "trailers"`
		}
	}
}

// withoutRepeats returns a SETTINGS frame with each setting once: the last
// value given, or for the header table size the smallest (the encoder
// must honour the smallest of the values it was sent). More than 100
// settings pass unchanged, for net/http to refuse.
func withoutRepeats(frame []byte) []byte {
	payload := frame[9:]
	n := len(payload) / 6
	if n < 2 || n > 100 {
		return frame
	}
	out := frame[:9]
	repeats := false
	for i := 0; i < n; i++ {
		id := payload[6*i : 6*i+2]
		val := payload[6*i+2 : 6*i+6]
		seen := -1
		for j := 9; j < len(out); j += 6 {
			if out[j] == id[0] && out[j+1] == id[1] {
				seen = j
			}
		}
		if seen < 0 {
			if repeats {
				out = append(out, payload[6*i:6*i+6]...)
			} else {
				out = out[:len(out)+6] // in place, nothing dropped yet
			}
			continue
		}
		if !repeats {
			// From here on out diverges from frame: copy what was kept.
			out = append([]byte(nil), out...)
			repeats = true
		}
		if id[0] == 0 && id[1] == 1 && binary.BigEndian.Uint32(val) > binary.BigEndian.Uint32(out[seen+2:seen+6]) {
			continue // SETTINGS_HEADER_TABLE_SIZE: keep the smaller
		}
		copy(out[seen+2:seen+6], val)
	}
	length := len(out) - 9
	out[0], out[1], out[2] = byte(length>>16), byte(length>>8), byte(length)
	return out
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
	g.penalty.strike(g.from)
	g.dead, g.out = true, refusedFrame
	return g.Read(p)
}
