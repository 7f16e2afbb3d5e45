package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Stream is a client's side of a connection: the preface, then frames.
type h2Stream struct {
	buf bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	blk bytes.Buffer
}

func newH2Stream() *h2Stream {
	s := &h2Stream{}
	s.buf.WriteString(http2.ClientPreface)
	s.fr = http2.NewFramer(&s.buf, nil)
	s.enc = hpack.NewEncoder(&s.blk)
	return s
}

// request writes a GET on stream id with the extra fields, its header
// block split over a HEADERS and a CONTINUATION frame when split is set.
func (s *h2Stream) request(id uint32, split bool, extra ...string) {
	s.blk.Reset()
	fields := append([]string{":method", "GET", ":scheme", "http", ":authority", "alpha.db", ":path", "/"}, extra...)
	for i := 0; i < len(fields); i += 2 {
		s.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	block := s.blk.Bytes()
	if !split {
		s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true,
			PadLength: 3, Priority: http2.PriorityParam{Weight: 7}})
		return
	}
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:len(block)/2], EndStream: true})
	s.fr.WriteContinuation(id, true, block[len(block)/2:])
}

func guarded(t *testing.T, in []byte) []byte {
	t.Helper()
	out, err := io.ReadAll(newH2Guard(&chunkedReader{data: in, n: 5}, nil, &appBudgets, nil))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Malformed requests (RFC 9113 8.2.2) and HPACK bombs end the connection
// before net/http sees the whole header block; well-formed ones pass unchanged, with the
// guard's HPACK table in step across blocks (the later requests refer to
// fields the first one indexed).
func TestH2GuardRefusesMalformedRequests(t *testing.T) {
	for _, c := range []struct {
		name  string
		extra []string
	}{
		{"Connection", []string{"connection", "keep-alive"}},
		{"Keep-Alive", []string{"keep-alive", "timeout=5"}},
		{"Proxy-Connection", []string{"proxy-connection", "close"}},
		{"Transfer-Encoding", []string{"transfer-encoding", "chunked"}},
		{"Upgrade", []string{"upgrade", "websocket"}},
		{"TE other than trailers", []string{"te", "gzip"}},
	} {
		for _, split := range []bool{false, true} {
			s := newH2Stream()
			s.fr.WriteSettings()
			s.request(1, false, "x-request-id", "abc", "te", "trailers")
			s.request(3, split, append([]string{"x-request-id", "abc"}, c.extra...)...)
			in := s.buf.Bytes()
			out := guarded(t, in)
			prefix, refused := bytes.CutSuffix(out, refusedFrame)
			if !refused {
				t.Errorf("%s (split %v): passed on, want the connection ended", c.name, split)
				continue
			}
			if !bytes.HasPrefix(in, prefix) || len(prefix) == len(in) {
				t.Errorf("%s (split %v): what passed before the refusal is not the stream short of the bad block's end", c.name, split)
			}
		}
	}

	// An HPACK bomb: one large entry, then a block of references to it.
	s := newH2Stream()
	s.fr.WriteSettings()
	s.request(1, false, "x-bomb", string(bytes.Repeat([]byte("b"), 4000)))
	s.request(3, false, "x-request-id", "abc")
	before := s.buf.Len()
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: bytes.Repeat([]byte{0xbf}, 70), EndHeaders: true}) // index 63: x-bomb
	in := s.buf.Bytes()
	prefix, refused := bytes.CutSuffix(guarded(t, in), refusedFrame)
	if !refused || !bytes.Equal(prefix, in[:before]) {
		t.Fatalf("HPACK bomb: refused %v after %d bytes, want refused after the %d before the bomb", refused, len(prefix), before)
	}

	s = newH2Stream()
	s.fr.WriteSettings()
	for i := uint32(0); i < 20; i++ {
		s.request(2*i+1, i%2 == 1, "x-request-id", "abc", "te", "trailers", "x-n", string(rune('a'+i)))
	}
	s.fr.WriteRSTStream(3, http2.ErrCodeCancel)
	in = s.buf.Bytes()
	if out := guarded(t, in); !bytes.Equal(out, in) {
		t.Fatalf("the guard changed well-formed requests (%d bytes in, %d out)", len(in), len(out))
	}
}

// A SETTINGS frame that repeats a setting passes as the same settings
// without repeats (net/http hangs up on repeats, RFC 9113 6.5.3 says
// process them in order): the last value, the smallest for the header
// table size.
func TestH2GuardSettingsRepeats(t *testing.T) {
	s := newH2Stream()
	s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100},
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: 100},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1},
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	s.request(1, false)
	want := newH2Stream()
	want.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1},
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: 100},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	want.request(1, false)
	if out := guarded(t, s.buf.Bytes()); !bytes.Equal(out, want.buf.Bytes()) {
		t.Fatalf("guarded SETTINGS:\n got %x\nwant %x", out, want.buf.Bytes())
	}
}

// FuzzH2Guard: whatever a client sends, the guard passes it on frame for
// frame (SETTINGS without repeats), possibly up to the refusing frame
// and nothing after, and never hangs or panics. Tiny budgets, so the
// refusals are reached.
func FuzzH2Guard(f *testing.F) {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true})
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	fr.WritePing(false, [8]byte{})
	fr.WriteContinuation(1, false, make([]byte, 40))
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
	f.Add(b.Bytes(), uint8(3))
	f.Add([]byte{0, 0, 0, 0x3, 0, 0, 0, 0, 1, 0, 0}, uint8(1)) // cut mid frame
	budgets := &h2Budgets{frames: [frameTypes]int{0x3: 2, 0x4: 2, 0x6: 2}, block: 64}
	f.Fuzz(func(t *testing.T, frames []byte, chunk uint8) {
		in := append([]byte(http2.ClientPreface), frames...)
		out, err := io.ReadAll(newH2Guard(&chunkedReader{data: in, n: int(chunk%32) + 1}, nil, budgets, nil))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(out, []byte(http2.ClientPreface)) {
			t.Fatalf("guard turned %q into %q", in, out)
		}
		in, out = in[len(http2.ClientPreface):], out[len(http2.ClientPreface):]
		for len(out) > 0 {
			if bytes.Equal(out, refusedFrame) {
				return
			}
			if len(in) < 9 || 9+frameLen(in) > len(in) { // cut off: the rest as it was
				if !bytes.Equal(out, in) {
					t.Fatalf("guard turned the last %q into %q", in, out)
				}
				return
			}
			n := 9 + frameLen(in)
			if in[3] != frameSettings || in[4]&flagAck != 0 || frameLen(in)%6 != 0 || n > 9+maxHeldFrame || frameLen(in)/6 > 100 {
				if !bytes.HasPrefix(out, in[:n]) {
					t.Fatalf("guard turned frame %q into %q", in[:n], out)
				}
				in, out = in[n:], out[n:]
				continue
			}
			if len(out) < 9 || 9+frameLen(out) > len(out) || !bytes.Equal(out[3:9], in[3:9]) {
				t.Fatalf("guard turned SETTINGS %q into %q", in[:n], out)
			}
			m := 9 + frameLen(out)
			if got, want := settingsOf(t, out[9:m], true), settingsOf(t, in[9:n], false); !equalSettings(got, want) {
				t.Fatalf("SETTINGS %q became %q: settings %v, want %v", in[:n], out[:m], got, want)
			}
			in, out = in[n:], out[m:]
		}
		if len(in) > 0 {
			t.Fatalf("guard dropped %q", in)
		}
	})
}

func frameLen(b []byte) int { return int(b[0])<<16 | int(b[1])<<8 | int(b[2]) }

// settingsOf returns a SETTINGS payload's effect, in first-seen order:
// each value in order replaces the last, except that the header table size
// keeps the smallest. With unique it fails on a repeated setting.
func settingsOf(t *testing.T, payload []byte, unique bool) [][2]uint32 {
	var out [][2]uint32
	for i := 0; i+6 <= len(payload); i += 6 {
		id, val := uint32(binary.BigEndian.Uint16(payload[i:])), binary.BigEndian.Uint32(payload[i+2:])
		seen := false
		for j := range out {
			if out[j][0] == id {
				if unique {
					t.Fatalf("setting %d repeated in %x", id, payload)
				}
				seen = true
				if id != 1 || val < out[j][1] {
					out[j][1] = val
				}
			}
		}
		if !seen {
			out = append(out, [2]uint32{id, val})
		}
	}
	return out
}

func equalSettings(a, b [][2]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkH2Guard: what the guard costs per request, one gRPC-like
// header block and a small DATA frame each (go test -bench H2Guard).
func BenchmarkH2Guard(b *testing.B) {
	s := newH2Stream()
	s.fr.WriteSettings()
	for i := uint32(0); i < 1000; i++ {
		s.request(2*i+1, false, "content-type", "application/grpc", "te", "trailers", "grpc-timeout", "1S",
			"user-agent", "grpc-go/1.79", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		s.fr.WriteData(2*i+1, true, make([]byte, 64))
	}
	in := s.buf.Bytes()
	p := make([]byte, 32<<10)
	b.SetBytes(int64(len(in)) / 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += 1000 {
		g := newH2Guard(bytes.NewReader(in), nil, &peerBudgets, nil)
		for {
			if _, err := g.Read(p); err != nil {
				break
			}
		}
	}
}
