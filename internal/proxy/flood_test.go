package proxy

// HTTP/2 floods against the outbound h2c listener (from the app) and the
// inbound mTLS listener (from an authenticated but abusive peer), with a
// well-behaved client at ~100 requests a second whose requests cross both:
// the abusive connection gets a GOAWAY, the well-behaved client sees no
// error, and heap growth stays bounded (printed).

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/h2flood"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

func TestHTTP2FloodsAreCutOff(t *testing.T) {
	// Under -race on a loaded machine the engine may handle fewer than
	// 1000 streams a second, so Rapid Reset would never reach the
	// production budget here (the budgets themselves are checked at full
	// speed in TestEngineBudgets). No test in this package runs in
	// parallel.
	// A sidecar's connection to another keeps the budgets it had when it
	// was opened; it relays what each app connection behind it sends
	// within that one's budget, so it gets sixteen times the room, as in
	// production. Those flooding the inbound side directly get the
	// lowered budget.
	savedApp, savedPeer := appBudgets, peerBudgets
	appBudgets.Resets, peerBudgets.Resets = 200, 16*200
	t.Cleanup(func() { appBudgets, peerBudgets = savedApp, savedPeer })
	m := newTestMesh(t, 1)
	peer := meshtls.ClientConfig(m.client, meshtls.Exactly(m.serverID))
	peer.NextProtos = []string{"h2"}
	sides := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"outbound h2c", h2flood.Dial(m.appAddr)},
		{"inbound mTLS", func() (net.Conn, error) {
			addr := net.JoinHostPort(m.endpoints[0].GetAddress(), fmt.Sprint(m.endpoints[0].GetPort()))
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, peer)
		}},
	}
	for _, side := range sides {
		if side.name == "inbound mTLS" {
			peerBudgets.Resets, peerBudgets.HeaderBytes = 200, appBudgets.HeaderBytes
		}
		for _, name := range h2flood.Kinds {
			flood, err := h2flood.New(name, "alpha.db")
			if err != nil {
				t.Fatal(err)
			}
			t.Run(side.name+"/"+name, func(t *testing.T) {
				// Each flood from a clean record: the penalty for the
				// last one (TestFloodPenalty) would hold this one's
				// connections.
				m.outServer.floods.forgetAll()
				m.inbounds[0].floods.forgetAll()
				floodOnce(t, m, side.dial, name, flood)
			})
		}
	}
}

// floodOnce floods one connection from dial until the proxy ends it, with
// the well-behaved client beside it.
func floodOnce(t *testing.T, m *testMesh, dial func() (net.Conn, error), name string, flood h2flood.Step) {
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

	start := time.Now()
	// Flood until the GOAWAY (bounded).
	res, err := h2flood.Run(dial, flood, 1000000, 8*time.Second, func() {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Give the well-behaved client at least a second beside the flood.
	time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
	close(stop)
	wg.Wait()
	t.Logf("%s: %s after %d frames in %v; heap in use +%d KiB at peak; well-behaved client %d ok, %d failed",
		name, res.End, res.Steps, time.Since(start).Round(time.Millisecond), (peak-min(peak, base))>>10, ok.Load(), failed.Load())
	if !res.GoAway() {
		t.Errorf("%s: the abusive connection ended with %q, want a GOAWAY", name, res.End)
	}
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%s: the well-behaved client had %d failures and %d successes", name, failed.Load(), ok.Load())
	}
	if peak-min(peak, base) > 256<<20 {
		t.Errorf("%s: heap grew by %d MiB", name, (peak-base)>>20)
	}
}

// TestEngineBudgets feeds an engine server Conn, over loopback, what a
// client sends within one second (its budget clock stands still, however
// slow the machine), with the production budgets: a well-behaved client
// stays under every one; one past a budget is cut off as a flood.
func TestEngineBudgets(t *testing.T) {
	// Header blocks as one client's encoder makes them, in order: the
	// request alone (reusable: it only adds :authority to the table), or
	// a bomb: a 4 kB field indexed, then sections that reference it.
	encode := func(enc *hpack.Encoder, buf *bytes.Buffer, extra ...hpack.HeaderField) []byte {
		buf.Reset()
		for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: "/"}, {Name: ":authority", Value: "alpha.db"}}, extra...) {
			enc.WriteField(f)
		}
		return bytes.Clone(buf.Bytes())
	}
	var buf bytes.Buffer
	request := encode(hpack.NewEncoder(&buf), &buf)
	enc := hpack.NewEncoder(&buf)
	bomb := encode(enc, &buf, hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)})
	refs := append(encode(enc, &buf), bytes.Repeat([]byte{0xbe}, 15)...) // index 62, x-bomb: 60 kB decoded
	frames := func(write func(fr *http2.Framer, i int), n int) []byte {
		var b bytes.Buffer
		b.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&b, nil)
		fr.WriteSettings()
		for i := range n {
			write(fr, i)
		}
		return b.Bytes()
	}
	headers := func(fr *http2.Framer, i int) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: request, EndHeaders: true, EndStream: true})
	}
	cancelled := func(fr *http2.Framer, i int) { // a request, then its cancellation
		headers(fr, i)
		fr.WriteRSTStream(uint32(2*i+1), http2.ErrCodeCancel)
	}
	bombs := func(fr *http2.Framer, i int) {
		b := refs
		if i == 0 {
			b = bomb
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: b, EndHeaders: true, EndStream: true})
		fr.WriteRSTStream(uint32(2*i+1), http2.ErrCodeCancel)
	}
	cases := []struct {
		name    string
		stream  []byte
		flooded bool
		peer    bool // another sidecar's pooled connection
	}{
		{"1000 requests, each cancelled", frames(cancelled, 1000), false, false},
		{"Rapid Reset past 1000 a second", frames(cancelled, 1001), true, false},
		{"100 SETTINGS past the preface's", frames(func(fr *http2.Framer, i int) { fr.WriteSettings() }, 100), false, false},
		{"101 SETTINGS past the preface's", frames(func(fr *http2.Framer, i int) { fr.WriteSettings() }, 101), true, false},
		{"a sidecar's pooled connection: 5000 cancellations", frames(cancelled, 5000), false, true},
		{"a sidecar's pooled connection: Rapid Reset past 16000", frames(cancelled, 16001), true, true},
		{"SETTINGS ACKs are free", frames(func(fr *http2.Framer, i int) { fr.WriteSettingsAck() }, 5000), false, false},
		{"gRPC: a request and two BDP pings each", frames(func(fr *http2.Framer, i int) {
			cancelled(fr, i)
			fr.WritePing(false, [8]byte{})
			fr.WritePing(false, [8]byte{})
		}, 400), false, false},
		{"101 PINGs and no requests", frames(func(fr *http2.Framer, i int) { fr.WritePing(false, [8]byte{}) }, 101), true, false},
		{"250 header sections of 60 kB", frames(bombs, 250), false, false},
		{"HPACK bomb: 60 kB sections past 16 MiB", frames(bombs, 300), true, false},
		{"a sidecar's pooled connection: 1000 header sections of 60 kB", frames(bombs, 1000), false, true},
		{"a sidecar's pooled connection: 60 kB sections past 64 MiB", frames(bombs, 1150), true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			budgets := appBudgets
			if c.peer {
				budgets = peerBudgets
			}
			start := time.Now()
			budgets.Clock = func() time.Time { return start } // all within one second
			if got := floodsEngine(t, budgets, c.stream); got != c.flooded {
				t.Errorf("cut off as a flood = %v, want %v", got, c.flooded)
			}
		})
	}
}

// unanswered is a server handler that leaves every request unanswered.
type unanswered struct{}

func (unanswered) Headers(*h2.Stream, *http2.MetaHeadersFrame, bool) {}
func (unanswered) Data(st *h2.Stream, p []byte, _ bool)              { st.Consumed(len(p)) }
func (unanswered) Closed(*h2.Stream, error)                          {}

// floodsEngine writes stream to an engine server Conn with budgets b,
// reads all it answers, and reports whether it cut the client off as a
// flood.
func floodsEngine(t *testing.T, b h2.Budgets, stream []byte) bool {
	t.Helper()
	var flooded atomic.Bool
	cfg := engineServerConfig(b, 0, &penaltyBox{}, nil)
	cfg.OnFlood = func(string) { flooded.Store(true) }
	served := make(chan struct{})
	addr := serve(t, func(c net.Conn) {
		defer close(served)
		defer c.Close()
		_ = h2.NewServerConn(c, cfg, unanswered{}).Run()
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		c.Write(stream)
		c.(*net.TCPConn).CloseWrite() // the server reads all of it, then EOF
	}()
	io.Copy(io.Discard, c)
	<-served
	return flooded.Load()
}

// A client cut off for an HTTP/2 flood waits before its next HTTP/2
// connection is served, doubling with each cut; a new HTTP/1.1 connection
// from the same address is served at once, also while the HTTP/2 one is
// held.
func TestFloodPenalty(t *testing.T) {
	saved := appBudgets
	appBudgets.Resets = 200 // as in TestHTTP2FloodsAreCutOff: -race is slow
	t.Cleanup(func() { appBudgets = saved })
	m := newTestMesh(t, 1)
	get := func(h2 bool) error {
		p := new(http.Protocols)
		if h2 {
			p.SetUnencryptedHTTP2(true)
		} else {
			p.SetHTTP1(true)
		}
		client := &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 20 * time.Second}
		defer client.CloseIdleConnections()
		resp, err := client.Get("http://" + m.appAddr + "/")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	flood, _ := h2flood.New("rapid reset", "alpha.db")
	for strike, penalty := range []time.Duration{time.Second, 2 * time.Second} {
		start := time.Now()
		res, err := h2flood.Run(h2flood.Dial(m.appAddr), flood, 1000000, 8*time.Second, nil)
		if err != nil || !res.GoAway() {
			t.Fatalf("flood %d: %v, %s: want a GOAWAY", strike+1, err, res.End)
		}
		cut := time.Since(start)
		served := make(chan time.Time, 1)
		go func() {
			if err := get(true); err != nil {
				t.Errorf("a new HTTP/2 connection after flood %d: %v", strike+1, err)
			}
			served <- time.Now()
		}()
		if err := get(false); err != nil {
			t.Fatalf("a new HTTP/1.1 connection after flood %d: %v", strike+1, err)
		}
		h1Done := time.Now()
		h2Done := <-served
		t.Logf("flood %d: cut off after %v; a new HTTP/1.1 connection answered after %v, a new HTTP/2 one after %v",
			strike+1, cut.Round(time.Millisecond), h1Done.Sub(start).Round(time.Millisecond), h2Done.Sub(start).Round(time.Millisecond))
		if h2Done.Sub(start) < penalty {
			t.Errorf("flood %d: a new HTTP/2 connection was served %v after the flood began, want the %v penalty", strike+1, h2Done.Sub(start), penalty)
		}
		if !h1Done.Before(h2Done) {
			t.Errorf("flood %d: the HTTP/1.1 connection was held up with the HTTP/2 one", strike+1)
		}
	}
}

func TestPenaltyBox(t *testing.T) {
	var b penaltyBox
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 4000}
	other := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 4000}
	if b.wait(a) != 0 {
		t.Fatal("a client never cut off waits")
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		b.strike(a)
		if got := b.wait(a); got > want || got < want-time.Second {
			t.Errorf("after %d cuts: wait %v, want about %v", i+1, got, want)
		}
	}
	if b.wait(other) != 0 {
		t.Error("another address waits too")
	}
	b.m[netip.MustParseAddr("127.0.0.9")] = penalty{strikes: 6, last: time.Now().Add(-penaltyForget - time.Second)}
	b.strike(a)
	if got := b.wait(a); got > time.Second {
		t.Errorf("a cut a minute after the last: wait %v, want the first penalty again", got)
	}
	for i := range penaltyClients + 10 {
		b.strike(&net.TCPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)), Port: 1})
	}
	if len(b.m) > penaltyClients {
		t.Errorf("the box holds %d clients, want at most %d", len(b.m), penaltyClients)
	}
}

// The engine's budget for decoded header bytes must hold an honest peak:
// a request as a sidecar sends it to another (trace context, request id,
// the caller's metadata) at 60 000 a second on one mesh connection, and
// 15 000 a second on one h2c or gRPC connection from an app. At 16 MiB
// the mesh connection of BenchmarkPairHTTP1 was cut as a flood.
func TestHeaderBudgetsHoldHonestPeaks(t *testing.T) {
	peer := encodePeer(telemetry.Peer{Workload: "productpage-v1", Namespace: "bookinfo", App: "productpage", Version: "v1",
		CanonicalService: "productpage", CanonicalRevision: "v1"}, "reviews.bookinfo.svc.cluster.local", "reviews", "bookinfo")
	section := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "reviews.bookinfo.svc.cluster.local:9080"}, {Name: ":path", Value: "/api/v1/products/12345/reviews?page=2"},
		{Name: "user-agent", Value: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"},
		{Name: "accept", Value: "application/json"}, {Name: "x-request-id", Value: "9d2c1f7e-3b7a-4c52-a1e3-6f0f4b8e2d11"},
		{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {Name: peerHeaderField, Value: peer}}
	size := 0
	for _, f := range section {
		size += int(f.Size())
	}
	for _, c := range []struct {
		name   string
		budget int
		want   int
	}{
		{"a sidecar's mesh connection", peerBudgets.HeaderBytes, 60000},
		{"an app's h2c connection", appBudgets.HeaderBytes, 15000},
	} {
		if got := c.budget / size; got < c.want {
			t.Errorf("%s: %d B/s of decoded headers holds %d requests of %d B a second, want %d", c.name, c.budget, got, size, c.want)
		}
	}
}
