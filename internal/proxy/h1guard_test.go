package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// Request smuggling: requests whose framing a server behind the proxy
// might read differently are answered 400, the connection is closed, and
// nothing reaches an app. Checked on the outbound side (the app's
// requests) and on the inbound side (plaintext from outside the mesh).
func TestSmugglingIsRefused(t *testing.T) {
	var reached atomic.Int32
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reached.Add(1)
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		})
	})
	inbound := serve(t, func(c net.Conn) { m.inbounds[0].HandleConn(c, m.appPort) })
	const h = "POST / HTTP/1.1\r\nHost: alpha.db\r\n"
	for _, tc := range []struct{ name, req string }{
		{"Content-Length with Transfer-Encoding", h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"two Content-Lengths", h + "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"},
		{"two equal Content-Lengths", h + "Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"},
		{"a Content-Length list", h + "Content-Length: 4, 4\r\n\r\nabcd"},
		{"a signed Content-Length", h + "Content-Length: +4\r\n\r\nabcd"},
		{"bare LF", "GET / HTTP/1.1\nHost: alpha.db\n\n"},
		{"bare LF after one header", "GET / HTTP/1.1\r\nHost: alpha.db\nX: y\r\n\r\n"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: alpha.db\r\nX-A: b\r\n c\r\n\r\n"},
		{"chunk size not hex", h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"},
		{"negative chunk size", h + "Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n"},
		{"chunk size with 0x", h + "Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"},
		{"chunk size overflowing", h + "Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n"},
		{"chunk size line with bare LF", h + "Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"},
		{"Transfer-Encoding other than chunked", h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
		{"two Transfer-Encodings", h + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"},
	} {
		for side, addr := range map[string]string{"outbound": m.appAddr, "inbound": inbound} {
			before := reached.Load()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, tc.req)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Errorf("%s, %s: %v", side, tc.name, err)
				c.Close()
				continue
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s, %s: status %d, want 400", side, tc.name, resp.StatusCode)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("%s, %s: the connection stayed open (%v), want it closed", side, tc.name, err)
			}
			if reached.Load() != before {
				t.Errorf("%s, %s: the request reached the app", side, tc.name)
			}
			c.Close()
		}
	}

	// Well-framed requests still work, pipelined on one connection.
	c, err := net.Dial("tcp", m.appAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, h+"Content-Length: 3\r\n\r\nabc"+
		h+"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\ndef\r\n2\r\ngh\r\n0\r\nX-Trailer: t\r\n\r\n"+
		"\r\nGET / HTTP/1.1\r\nHost: alpha.db\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"abc", "defgh", ""} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("well-framed request: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("well-framed request: %d %q, want 200 %q", resp.StatusCode, b, want)
		}
	}
}

// The guard passes a stream on unchanged, or a checked prefix of it and
// then a request line net/http refuses, or a
// prefix up to a request line that is not HTTP/1 and nothing after it:
// never anything else.
func FuzzH1Guard(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\n\n",
		"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00\x01\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		g := &h1Guard{src: &chunkedReader{data: in, n: int(chunk%64) + 1}}
		out, err := io.ReadAll(g)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(out, in) {
			return
		}
		prefix, refused := bytes.CutSuffix(out, []byte(guardRefusalBytes))
		if !refused && bytes.HasPrefix(in, out) {
			prefix, refused = out, notHTTP1(in[len(out):])
		}
		if !refused || !bytes.HasPrefix(in, prefix) {
			t.Fatalf("guard turned %q into %q", in, out)
		}
	})
}

// notHTTP1 reports whether rest starts, after empty lines, with a whole
// line that does not end in an HTTP/1.x version.
func notHTTP1(rest []byte) bool {
	for bytes.HasPrefix(rest, []byte("\r\n")) {
		rest = rest[2:]
	}
	line, _, ok := bytes.Cut(rest, []byte("\r\n"))
	if !ok {
		return false
	}
	v := line[bytes.LastIndexByte(line, ' ')+1:]
	return !(len(v) == 8 && bytes.HasPrefix(v, []byte("HTTP/1.")) && v[7] >= '0' && v[7] <= '9')
}

// chunkedReader returns data n bytes at a time.
type chunkedReader struct {
	data []byte
	n    int
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.data)
	r.data = r.data[k:]
	return k, nil
}

// TestGuardStaysAfterARefusedUpgrade: an Upgrade the app answers with
// anything but 101 leaves the connection HTTP/1.1, so the guard keeps
// checking what follows on it, on both sides (the inbound over mTLS too).
func TestGuardStaysAfterARefusedUpgrade(t *testing.T) {
	var reached atomic.Int32
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/smuggled" {
				reached.Add(1)
			}
			w.WriteHeader(http.StatusUpgradeRequired) // no switch
		})
	})
	inbound := serve(t, func(c net.Conn) { m.inbounds[0].HandleConn(c, m.appPort) })
	for side, addr := range map[string]string{"outbound": m.appAddr, "inbound (plaintext)": inbound} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: alpha.db\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: the upgrade: %v", side, err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		// Bare LFs: net/http would take this request; the guard must not.
		io.WriteString(c, "GET /smuggled HTTP/1.1\nHost: alpha.db\n\n")
		if resp, err := http.ReadResponse(br, nil); err == nil {
			resp.Body.Close()
		}
		c.Close()
		if reached.Load() != 0 {
			t.Errorf("%s: a request with bare LFs after a refused Upgrade reached the app", side)
		}
	}
}
