package h2

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/h2flood"
)

// The budgets the proxy gives an app's connections (internal/proxy).
var testBudgets = Budgets{Resets: 1000, Settings: 100, Pings: 100, HeaderBytes: 4 << 20}

// Every flood of h2flood ends its connection with a GOAWAY, and the ones
// the budgets catch are reported to OnFlood.
func TestFloodsEndTheConnection(t *testing.T) {
	for _, kind := range h2flood.Kinds {
		t.Run(kind, func(t *testing.T) {
			var mu sync.Mutex
			var floods []string
			addr := echoServer(t, Config{Budgets: testBudgets, OnFlood: func(what string) {
				mu.Lock()
				floods = append(floods, what)
				mu.Unlock()
			}})
			step, err := h2flood.New(kind, "app")
			if err != nil {
				t.Fatal(err)
			}
			res, err := h2flood.Run(h2flood.Dial(addr), step, 1000000, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.GoAway() {
				t.Fatalf("after %d steps the connection ended with %q, want a GOAWAY", res.Steps, res.End)
			}
			mu.Lock()
			defer mu.Unlock()
			// The CONTINUATION flood is refused by the Framer (PROTOCOL_ERROR:
			// the header list outgrew what it decodes), not by a budget.
			if want := kind != "CONTINUATION flood"; want != (len(floods) == 1) {
				t.Errorf("OnFlood calls: %q (GOAWAY %s after %d steps)", floods, res.End, res.Steps)
			}
		})
	}
}

// A busy but honest client stays within the budgets: many requests on one
// connection, each with a few PINGs.
func TestBudgetsLeaveHonestClientsAlone(t *testing.T) {
	flooded := make(chan string, 1)
	addr := echoServer(t, Config{Budgets: testBudgets, OnFlood: func(what string) { flooded <- what }})
	client := h2cClient()
	for i := range 500 {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	select {
	case what := <-flooded:
		t.Fatalf("an honest client was cut off for %s", what)
	default:
	}
}

// A client that pings after every DATA frame it receives, as gRPC's
// bandwidth estimator does while a large message streams in, is left
// alone however many it sends (here 512 in well under a second, against
// a budget of 100), and each PING is answered.
func TestPingsThatFollowDataAreFree(t *testing.T) {
	flooded := make(chan string, 1)
	addr := echoServer(t, Config{Budgets: testBudgets, OnFlood: func(what string) { flooded <- what }})
	c, err := netDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	// A 1 KiB stream window: the 512 KiB echo comes in 512 DATA frames.
	const frame, body = 1 << 10, 512 << 10
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: frame})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "app"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	for sent := 0; sent < body; sent += 16 << 10 {
		fr.WriteData(1, sent+16<<10 == body, make([]byte, 16<<10))
	}
	got, pings, acks := 0, 0, 0
	for got < body || acks < pings {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes, %d PINGs and %d ACKs: %v", got, pings, acks, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			t.Fatalf("after %d bytes and %d PINGs: GOAWAY %v", got, pings, f.ErrCode)
		case *http2.PingFrame:
			if f.IsAck() {
				acks++
			}
		case *http2.DataFrame:
			n := len(f.Data())
			if got += n; n == 0 || got == body {
				continue
			}
			pings++
			fr.WritePing(false, [8]byte{byte(pings)})
			fr.WriteWindowUpdate(1, uint32(n))
			fr.WriteWindowUpdate(0, uint32(n))
		}
	}
	if pings < 500 {
		t.Fatalf("only %d PINGs went out", pings)
	}
	// Without DATA in between, the budget holds.
	for i := range 200 {
		if fr.WritePing(false, [8]byte{0xff, byte(i)}) != nil {
			break
		}
	}
	select {
	case what := <-flooded:
		if what != "PING frames" {
			t.Fatalf("cut off for %s, want PING frames", what)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("200 PINGs with no DATA between them went unnoticed")
	}
}

// A request whose header section is over MaxHeaderListSize gets 431, and
// the connection goes on; one over four times that ends the connection.
func TestLargeHeaderSections(t *testing.T) {
	addr := echoServer(t, Config{MaxHeaderListSize: 16 << 10})
	conn, done := dialClient(t, addr)
	get := func(extra int) *response {
		r := &response{done: make(chan struct{})}
		fields := []Field{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", "/"},
			{"x-big", strings.Repeat("v", extra)}}
		if _, err := conn.NewStream(r, false, true, fields...); err != nil {
			t.Fatalf("NewStream: %v", err)
		}
		<-r.done
		return r
	}
	if r := get(20 << 10); r.status != "431" {
		t.Fatalf("a 20 KiB header with 16 KiB allowed: status %q (%v), want 431", r.status, r.err)
	}
	if r := get(1 << 10); r.status != "200" {
		t.Fatalf("the next request on the connection: status %q (%v), want 200", r.status, r.err)
	}
	if r := get(100 << 10); r.err == nil {
		t.Fatalf("a 100 KiB header with 16 KiB allowed: status %q, want the connection ended", r.status)
	}
	select {
	case err := <-done:
		if !strings.Contains(err.Error(), "GOAWAY") && !strings.Contains(err.Error(), "EOF") {
			t.Logf("connection ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
}

// dialClient opens a client Conn to addr (collector handler) and returns
// it with the channel Run's result arrives on.
func dialClient(t *testing.T, addr string) (*Conn, chan error) {
	t.Helper()
	c, err := netDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	conn := NewClientConn(c, Config{}, collector{})
	done := make(chan error, 1)
	go func() { done <- conn.Run() }()
	t.Cleanup(func() { conn.Close() })
	select {
	case <-conn.Settled():
	case <-time.After(10 * time.Second):
		t.Fatal("no SETTINGS from the server")
	}
	return conn, done
}

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
