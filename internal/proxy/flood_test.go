package proxy

// HTTP/2 floods against the outbound h2c listener, with a well-behaved
// client on its own connection at ~100 requests a second: the abusive
// connection gets a GOAWAY, the well-behaved client sees no error, and heap
// growth stays bounded (printed).

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestHTTP2FloodsAreCutOff(t *testing.T) {
	// The guard counts frames as net/http reads them, and under -race on a
	// loaded machine net/http may handle fewer than 1000 streams a second,
	// so Rapid Reset would never reach the production budget here (the
	// budgets themselves are checked at full speed in TestH2GuardBudgets).
	// No test in this package runs in parallel.
	saved := h2Budget
	h2Budget[0x3] = 200
	t.Cleanup(func() { h2Budget = saved })
	m := newTestMesh(t, 1)
	block := func(extra ...hpack.HeaderField) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		e.SetMaxDynamicTableSizeLimit(4096)
		for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: "alpha.db"}, {Name: ":path", Value: "/"}}, extra...) {
			e.WriteField(f)
		}
		return b.Bytes()
	}
	plain := block()
	// Every flood but the HPACK bomb ends in a GOAWAY. net/http refuses each
	// bomb stream on its own (the decoded headers exceed MaxHeaderBytes) and
	// keeps the connection; what matters there is bounded memory and an
	// unharmed neighbour.
	keepsConnection := map[string]bool{"HPACK bomb": true}
	floods := map[string]func(fr *http2.Framer, i int) error{
		// CVE-2023-44487: open and cancel streams as fast as possible.
		"rapid reset": func(fr *http2.Framer, i int) error {
			id := uint32(2*i + 1)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: plain, EndHeaders: true, EndStream: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		},
		// CVE-2023-45288: a header block that never ends.
		"CONTINUATION flood": func(fr *http2.Framer, i int) error {
			if i == 0 {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: plain})
			}
			return fr.WriteContinuation(1, false, bytes.Repeat([]byte{0x40, 0x01, 'x', 0x01, 'y'}, 200))
		},
		// Control frames net/http answers one by one, as long as the
		// client reads the answers.
		"PING flood": func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) },
		"SETTINGS flood": func(fr *http2.Framer, i int) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		},
		// HPACK bomb: one large entry in the dynamic table, then header
		// blocks that reference it thousands of times.
		"HPACK bomb": func(fr *http2.Framer, i int) error {
			if i == 0 {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true,
					BlockFragment: block(hpack.HeaderField{Name: "x-bomb", Value: string(bytes.Repeat([]byte("b"), 4000))})})
			}
			refs := append(append([]byte{}, plain...), bytes.Repeat([]byte{0xbe}, 16000)...) // index 62: x-bomb
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: refs, EndHeaders: true, EndStream: true})
		},
	}
	for name, flood := range floods {
		t.Run(name, func(t *testing.T) {
			// The well-behaved client: its own connection, ~100 requests a second.
			stop := make(chan struct{})
			var ok, failed atomic.Int64
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				h2c := new(http.Protocols)
				h2c.SetUnencryptedHTTP2(true)
				client := &http.Client{Transport: &http.Transport{Protocols: h2c}, Timeout: 5 * time.Second}
				for tick := time.NewTicker(10 * time.Millisecond); ; {
					select {
					case <-stop:
						tick.Stop()
						return
					case <-tick.C:
					}
					resp, err := client.Get("http://" + m.appAddr + "/")
					if err == nil && resp.StatusCode == 200 {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
					if err == nil {
						resp.Body.Close()
					}
				}
			}()
			var peak uint64
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			base := ms.HeapInuse

			c, err := net.Dial("tcp", m.appAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(http2.ClientPreface))
			fr := http2.NewFramer(c, c)
			fr.WriteSettings()
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
			start := time.Now()
			sent := 0
			got := "still open"
			// Flood until the GOAWAY (bounded), or for 3 s where none is due.
			limit := 8 * time.Second
			if keepsConnection[name] {
				limit = 3 * time.Second
			}
		flooding:
			for ; sent < 1000000 && time.Since(start) < limit; sent++ {
				if flood(fr, sent) != nil {
					break // the proxy closed the connection
				}
				if sent%1000 == 0 {
					runtime.ReadMemStats(&ms)
					peak = max(peak, ms.HeapInuse)
					select {
					case got = <-verdict:
						break flooding
					default:
					}
				}
			}
			if got == "still open" {
				select {
				case got = <-verdict:
				case <-time.After(2 * time.Second):
				}
			}
			// Give the well-behaved client at least a second beside the flood.
			time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
			close(stop)
			wg.Wait()
			t.Logf("%s: %s after %d frames in %v; heap in use +%d KiB at peak; well-behaved client %d ok, %d failed",
				name, got, sent, time.Since(start).Round(time.Millisecond), (peak-min(peak, base))>>10, ok.Load(), failed.Load())
			goaway := got == http2.ErrCodeEnhanceYourCalm.String() || got == http2.ErrCodeProtocol.String() || got == http2.ErrCodeCompression.String()
			if !goaway && !keepsConnection[name] {
				t.Errorf("%s: the abusive connection ended with %q, want a GOAWAY", name, got)
			}
			if failed.Load() != 0 || ok.Load() == 0 {
				t.Errorf("%s: the well-behaved client had %d failures and %d successes", name, failed.Load(), ok.Load())
			}
			if peak-min(peak, base) > 256<<20 {
				t.Errorf("%s: heap grew by %d MiB", name, (peak-base)>>20)
			}
		})
	}
}

// TestH2GuardBudgets feeds the guard alone, at full speed, what a client
// sends: a well-behaved client stays under every budget; one past a budget
// within a second gets the refusing PING (then EOF) instead of its frames.
func TestH2GuardBudgets(t *testing.T) {
	frames := func(write func(fr *http2.Framer, i int), n int) []byte {
		var b bytes.Buffer
		b.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&b, nil)
		for i := range n {
			write(fr, i)
		}
		return b.Bytes()
	}
	headers := func(fr *http2.Framer, i int) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true})
	}
	cases := []struct {
		name    string
		stream  []byte
		refused bool
	}{
		{"1000 requests, each cancelled", frames(func(fr *http2.Framer, i int) {
			headers(fr, i)
			fr.WriteRSTStream(uint32(2*i+1), http2.ErrCodeCancel)
		}, 1000), false},
		{"Rapid Reset past 1000 a second", frames(func(fr *http2.Framer, i int) {
			headers(fr, i)
			fr.WriteRSTStream(uint32(2*i+1), http2.ErrCodeCancel)
		}, 1001), true},
		{"100 SETTINGS", frames(func(fr *http2.Framer, i int) { fr.WriteSettings() }, 100), false},
		{"101 SETTINGS", frames(func(fr *http2.Framer, i int) { fr.WriteSettings() }, 101), true},
		{"SETTINGS ACKs are free", frames(func(fr *http2.Framer, i int) { fr.WriteSettingsAck() }, 5000), false},
		{"gRPC: a request and two BDP pings each", frames(func(fr *http2.Framer, i int) {
			headers(fr, i)
			fr.WritePing(false, [8]byte{})
			fr.WritePing(false, [8]byte{})
		}, 500), false},
		{"101 PINGs and no requests", frames(func(fr *http2.Framer, i int) { fr.WritePing(false, [8]byte{}) }, 101), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := io.ReadAll(newH2Guard(bytes.NewReader(c.stream), nil))
			if err != nil {
				t.Fatal(err)
			}
			refused := bytes.HasSuffix(got, refusedFrame)
			if refused != c.refused {
				t.Fatalf("refused = %v, want %v", refused, c.refused)
			}
			if !refused && !bytes.Equal(got, c.stream) {
				t.Fatalf("the guard changed a well-behaved stream (%d bytes in, %d out)", len(c.stream), len(got))
			}
			if refused && !bytes.HasPrefix(c.stream, got[:len(got)-len(refusedFrame)]) {
				t.Fatal("what the guard passed before refusing is not a prefix of the input")
			}
		})
	}
}
