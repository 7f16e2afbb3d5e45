package main

// The floor arms: what a Go proxy pair over the same mutual TLS costs at
// its least, to tell what the request path's design can reach before it
// is built (issue #18). They serve HTTP/1.1 only and are not proxies a
// mesh could use: no routing, no policy, no metrics.
//
//   - tunnel: a TCP tunnel, one mTLS connection per app connection, two
//     goroutines per connection copying bytes (net's I/O, which passes the
//     runtime's entersyscall/exitsyscall on every read and write).
//   - tunnel-raw: the same, every socket read and write (under crypto/tls
//     too) a raw system call inside syscall.RawConn's readiness callbacks,
//     as cloudwego/netpoll does (internal/rawio): the netpoller still
//     parks and wakes the goroutine, the runtime never sees the call.
//   - relay: HTTP/1.1 -> HTTP/2 over one mTLS connection -> HTTP/1.1, built
//     as the design: no goroutine per request, the goroutine that
//     reads an event does the work it enables, frames of all streams
//     coalesced into one TLS write. Heads are parsed by the proxy's codec
//     (internal/proxy/h1).
//   - relay-raw: the relay on tunnel-raw's I/O.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	"github.com/trellis-mesh/trellis/internal/rawio"
)

var floorArms = []string{"tunnel", "tunnel-raw", "relay", "relay-raw"}

// The floor arms listen where the HAProxy pair does: the client side on
// loopback, the server side on the server's address.
const (
	floorClientAddr = "127.0.0.1:10080"
	floorServerPort = "8443"
)

// runFloor is `proxybench floor ARM client|server DIR`.
func runFloor(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: proxybench floor tunnel|tunnel-raw|relay|relay-raw client|server DIR")
	}
	arm, side, dir := args[0], args[1], args[2]
	relay, raw := strings.HasPrefix(arm, "relay"), strings.HasSuffix(arm, "-raw")
	certs, err := floorTLS(dir, side, relay)
	if err != nil {
		return err
	}
	upstream := net.JoinHostPort(serverIP, floorServerPort)
	switch {
	case side == "client" && relay:
		return relayClient(certs, upstream, raw)
	case side == "server" && relay:
		return relayServer(certs, upstream, raw)
	case side == "client":
		return tunnel(floorClientAddr, raw, func(c net.Conn) net.Conn { return c }, func() (net.Conn, error) {
			c, err := net.Dial("tcp", upstream)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(wrapRaw(c, raw), certs)
			return tc, tc.Handshake()
		})
	case side == "server":
		return tunnel(upstream, raw, func(c net.Conn) net.Conn { return tls.Server(c, certs) }, func() (net.Conn, error) {
			c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(httpPort))
			if err != nil {
				return nil, err
			}
			return wrapRaw(c, raw), nil
		})
	}
	return fmt.Errorf("floor: unknown side %q", side)
}

// floorTLS is a side's TLS config with the run's certificates: TLS 1.3,
// each side verifying the other against the CA, as the other pairs do.
func floorTLS(dir, side string, h2 bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, side+".crt"), filepath.Join(dir, side+".key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("floor: no CA in ca.pem")
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if side == "client" {
		cfg.RootCAs, cfg.ServerName = pool, "server.bench"
	} else {
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	if h2 {
		cfg.NextProtos = []string{"h2"}
	}
	return cfg, nil
}

// tunnel accepts on addr and copies each connection, as accept wraps it,
// both ways to the one dial makes for it.
func tunnel(addr string, raw bool, accept func(net.Conn) net.Conn, dial func() (net.Conn, error)) error {
	return serveTCP(addr, raw, func(c net.Conn) {
		in := accept(c)
		defer in.Close()
		out, err := dial()
		if err != nil {
			return
		}
		defer out.Close()
		go copyAll(out, in)
		copyAll(in, out)
	})
}

// serveTCP accepts on addr and runs handle on each connection (with raw
// I/O when raw), each on a goroutine of its own.
func serveTCP(addr string, raw bool, handle func(net.Conn)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go handle(wrapRaw(c, raw))
	}
}

func copyAll(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

func wrapRaw(c net.Conn, raw bool) net.Conn {
	if raw {
		return rawio.Wrap(c)
	}
	return c
}

// h2conn is one HTTP/2 connection of the relay: its reader, and the
// proxy's coalescing writer (internal/proxy/h2) for the frames of all its
// streams.
type h2conn struct {
	rd       *http2.Framer
	w        *h2.Writer
	received uint32 // DATA bytes since the last connection WINDOW_UPDATE (reader only)
}

// The relay's windows: both ends are ours and grant each other this much,
// so flow control never stalls a stream of the benchmark.
const relayWindow = 1 << 30

func newH2conn(conn net.Conn) *h2conn {
	c := &h2conn{rd: http2.NewFramer(nil, bufio.NewReaderSize(conn, 32<<10)), w: h2.NewWriter(conn, 0)}
	c.rd.SetReuseFrames()
	c.rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.rd.MaxHeaderListSize = 64 << 10
	return c
}

// start sends SETTINGS and the connection window (after the preface, on
// the client side).
func (c *h2conn) start(client bool) error {
	return c.w.Queue(func(f *h2.Frames) {
		if client {
			f.Raw([]byte(http2.ClientPreface))
		}
		_ = f.Framer().WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: relayWindow},
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
		_ = f.Framer().WriteWindowUpdate(0, relayWindow-65535)
	})
}

// headers sends a stream's HEADERS frame.
func (c *h2conn) headers(id uint32, fields []h2.Field, end bool) error {
	return c.w.Queue(func(f *h2.Frames) { f.Headers(id, end, fields...) })
}

// control answers the frames every reader handles alike; it reports
// whether f was one of them.
func (c *h2conn) control(f http2.Frame) (bool, error) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			return true, c.w.Queue(func(q *h2.Frames) { _ = q.Framer().WriteSettingsAck() })
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return true, c.w.Queue(func(q *h2.Frames) { _ = q.Framer().WritePing(true, f.Data) })
		}
	case *http2.DataFrame:
		return false, c.credit(f.Length)
	case *http2.GoAwayFrame:
		return true, errors.New("relay: GOAWAY")
	case *http2.WindowUpdateFrame:
	default:
		return false, nil
	}
	return true, nil
}

// credit gives the peer back the connection window received DATA used,
// in large steps.
func (c *h2conn) credit(n uint32) error {
	c.received += n
	if c.received < relayWindow/2 {
		return nil
	}
	n, c.received = c.received, 0
	return c.w.Queue(func(f *h2.Frames) { _ = f.Framer().WriteWindowUpdate(0, n) })
}

// hopByHop are the HTTP/1.1 fields that do not cross to HTTP/2.
var hopByHop = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true, "te": true}

// readHead reads an HTTP/1.1 request head (or, with response, a response
// head) from br with the proxy's codec: the start line's first two parts,
// the fields (names lowercased, hop-by-hop fields left out), and the
// body's length (-1: none given). Chunked bodies are refused (the floor
// serves Content-Length bodies only).
func readHead(br *bufio.Reader, response bool) (start []string, fields []h2.Field, length int64, err error) {
	var req h1.Request
	var resp h1.Response
	for {
		buf, _ := br.Peek(br.Buffered())
		var n int
		if response {
			n, err = h1.ParseResponse(buf, h1.Limits{MaxHeadBytes: br.Size()}, false, &resp)
		} else {
			n, err = h1.ParseRequest(buf, h1.Limits{MaxHeadBytes: br.Size()}, &req)
		}
		if err != nil {
			return nil, nil, 0, err
		}
		if n > 0 {
			defer br.Discard(n)
			break
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, nil, 0, err
		}
	}
	hf, body := req.Fields, req.Body
	start = []string{string(req.Method), string(req.Target)}
	if response {
		hf, body = resp.Fields, resp.Body
		start = []string{"HTTP/1.1", strconv.Itoa(resp.Status)}
	}
	if body.Chunked {
		return nil, nil, 0, errors.New("chunked bodies are not relayed")
	}
	for _, f := range hf {
		if name := strings.ToLower(string(f.Name)); !hopByHop[name] {
			fields = append(fields, h2.Field{Name: name, Value: string(f.Value)})
		}
	}
	return start, fields, body.Length, nil
}

// relayClient accepts HTTP/1.1 on loopback and sends every request as a
// stream of one HTTP/2 connection to the server side. Each app connection
// has one goroutine, which parses its requests and queues their frames;
// the connection's reader writes each response to its app connection.
func relayClient(cfg *tls.Config, upstream string, raw bool) error {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var c net.Conn
		if c, err = net.Dial("tcp", upstream); err == nil {
			tc := tls.Client(wrapRaw(c, raw), cfg)
			if err = tc.Handshake(); err != nil {
				c.Close()
			}
			conn = tc
		}
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	h := newH2conn(conn)
	if err := h.start(true); err != nil {
		return err
	}
	type app struct {
		conn net.Conn
		turn chan struct{} // held while a response is due: no pipelining
		out  []byte
	}
	var nextID uint32 = 1
	var mu sync.Mutex
	streams := map[uint32]*app{} // guarded by mu
	go func() {
		defer os.Exit(1) // the one upstream connection is gone
		for {
			f, err := h.rd.ReadFrame()
			if err != nil {
				fmt.Fprintln(os.Stderr, "relay client:", err)
				return
			}
			if ok, err := h.control(f); err != nil {
				fmt.Fprintln(os.Stderr, "relay client:", err)
				return
			} else if ok {
				continue
			}
			id := f.Header().StreamID
			mu.Lock()
			a := streams[id]
			mu.Unlock()
			if a == nil {
				continue
			}
			end := false
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				a.out = append(a.out[:0], "HTTP/1.1 "...)
				a.out = append(a.out, f.PseudoValue("status")...)
				a.out = append(a.out, " \r\n"...)
				for _, hf := range f.RegularFields() {
					a.out = append(append(append(append(a.out, hf.Name...), ": "...), hf.Value...), "\r\n"...)
				}
				a.out = append(a.out, "\r\n"...)
				end = f.StreamEnded()
			case *http2.DataFrame:
				a.out = append(a.out, f.Data()...)
				end = f.StreamEnded()
			case *http2.RSTStreamFrame:
				a.conn.Close()
				end = true
			}
			// A slow app connection holds up every stream here: a
			// real engine queues and writes without blocking.
			if end || len(a.out) > 64<<10 {
				_, _ = a.conn.Write(a.out)
				a.out = a.out[:0]
			}
			if end {
				mu.Lock()
				delete(streams, id)
				mu.Unlock()
				<-a.turn
			}
		}
	}()
	return serveTCP(floorClientAddr, raw, func(c net.Conn) {
		defer c.Close()
		a := &app{conn: c, turn: make(chan struct{}, 1)}
		br := bufio.NewReaderSize(c, 4096)
		for {
			start, fields, length, err := readHead(br, false)
			if err != nil {
				return
			}
			var body []byte
			if length > 0 {
				if length > 1<<20 {
					return
				}
				body = make([]byte, length)
				if _, err := io.ReadFull(br, body); err != nil {
					return
				}
			}
			authority := ""
			for i, f := range fields {
				if f.Name == "host" { // becomes :authority
					authority = f.Value
					fields = append(fields[:i], fields[i+1:]...)
					break
				}
			}
			a.turn <- struct{}{}
			err = h.w.Queue(func(f *h2.Frames) {
				// Stream IDs are taken in the order their HEADERS go out.
				id := nextID
				nextID += 2
				mu.Lock()
				streams[id] = a
				mu.Unlock()
				f.Headers(id, len(body) == 0, append([]h2.Field{{Name: ":method", Value: start[0]}, {Name: ":scheme", Value: "http"},
					{Name: ":authority", Value: authority}, {Name: ":path", Value: start[1]}}, fields...)...)
				if len(body) > 0 {
					f.Data(id, body, true)
				}
			})
			if err != nil {
				return
			}
		}
	})
}

// backend is one pooled HTTP/1.1 connection to the app. Its goroutine
// reads each response and queues it as frames on the stream it answers.
type backend struct {
	conn net.Conn
	br   *bufio.Reader
	cur  atomic.Pointer[relayStream] // nil: idle; deadStream: closed
}

type relayStream struct {
	h  *h2conn
	id uint32
}

var deadStream = &relayStream{}

// badGateway answers a stream the app did not.
var badGateway = []h2.Field{{Name: ":status", Value: "502"}, {Name: "content-length", Value: "0"}}

// backendPool holds the idle backends.
type backendPool struct {
	raw  bool // dial them with raw I/O
	mu   sync.Mutex
	idle []*backend
}

// take returns an idle backend claimed for s, dialling one when none is.
func (p *backendPool) take(s *relayStream) (*backend, error) {
	for {
		p.mu.Lock()
		var b *backend
		if n := len(p.idle); n > 0 {
			b, p.idle = p.idle[n-1], p.idle[:n-1]
		}
		p.mu.Unlock()
		if b == nil {
			break
		}
		if b.cur.CompareAndSwap(nil, s) {
			return b, nil
		}
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(httpPort))
	if err != nil {
		return nil, err
	}
	c = wrapRaw(c, p.raw)
	b := &backend{conn: c, br: bufio.NewReaderSize(c, 16<<10)}
	b.cur.Store(s)
	go b.serve(p)
	return b, nil
}

// serve reads responses until the connection ends, answering a stream
// still waiting then with 502.
func (b *backend) serve(p *backendPool) {
	defer b.conn.Close()
	for {
		start, fields, length, err := readHead(b.br, true)
		s := b.cur.Load()
		if err == nil && length < 0 { // a body until the app closes: not relayed
			err = errors.New("no content-length")
		}
		if err != nil || s == nil || s == deadStream {
			if s = b.cur.Swap(deadStream); s != nil && s != deadStream {
				_ = s.h.headers(s.id, badGateway, true)
			}
			return
		}
		// The head goes out with what of the body is buffered, the rest
		// as it arrives; the writer's lock is never held across a read
		// from the app.
		fields = append([]h2.Field{{Name: ":status", Value: start[1]}}, fields...)
		for first := true; first || length > 0; first = false {
			if length > 0 && b.br.Buffered() == 0 {
				if _, err := b.br.Peek(1); err != nil {
					_ = s.h.w.Queue(func(f *h2.Frames) { _ = f.Framer().WriteRSTStream(s.id, http2.ErrCodeInternal) })
					b.cur.Store(deadStream)
					return
				}
			}
			chunk, _ := b.br.Peek(int(min(max(length, 0), int64(b.br.Buffered()))))
			length -= int64(len(chunk))
			if length == 0 {
				b.cur.Store(nil) // the next response is another stream's
				p.mu.Lock()
				p.idle = append(p.idle, b)
				p.mu.Unlock()
			}
			_ = s.h.w.Queue(func(f *h2.Frames) {
				if first {
					f.Headers(s.id, length <= 0 && len(chunk) == 0, fields...)
				}
				if len(chunk) > 0 {
					f.Data(s.id, chunk, length == 0)
				}
			})
			_, _ = b.br.Discard(len(chunk))
		}
	}
}

// relayServer accepts the client side's mTLS HTTP/2 connections; each
// one's reader writes every request straight to a pooled backend.
func relayServer(cfg *tls.Config, addr string, raw bool) error {
	pool := &backendPool{raw: raw}
	return serveTCP(addr, raw, func(tc net.Conn) {
		c := tls.Server(tc, cfg)
		defer c.Close()
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
			return
		}
		h := newH2conn(c)
		if err := h.start(false); err != nil {
			return
		}
		open := map[uint32]*backend{} // streams whose request body is still coming
		var req []byte
		for {
			f, err := h.rd.ReadFrame()
			if err != nil {
				return
			}
			if ok, err := h.control(f); err != nil {
				return
			} else if ok {
				continue
			}
			id := f.Header().StreamID
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				req = append(req[:0], f.PseudoValue("method")...)
				req = append(append(append(req, ' '), f.PseudoValue("path")...), " HTTP/1.1\r\nhost: "...)
				req = append(append(req, f.PseudoValue("authority")...), "\r\n"...)
				for _, hf := range f.RegularFields() {
					req = append(append(append(append(req, hf.Name...), ": "...), hf.Value...), "\r\n"...)
				}
				req = append(req, "\r\n"...)
				b, err := pool.take(&relayStream{h: h, id: id})
				if err == nil {
					_, err = b.conn.Write(req)
				}
				if err != nil {
					_ = h.headers(id, badGateway, true)
					continue
				}
				if !f.StreamEnded() {
					open[id] = b
				}
			case *http2.DataFrame:
				if b := open[id]; b != nil {
					_, _ = b.conn.Write(f.Data())
					if f.StreamEnded() {
						delete(open, id)
					}
				}
			case *http2.RSTStreamFrame:
				if b := open[id]; b != nil {
					b.conn.Close()
					delete(open, id)
				}
			}
		}
	})
}
