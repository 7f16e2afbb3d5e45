package proxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		in       string
		want     Protocol
		wantMore bool
	}{
		{"", TCP, true},
		{"G", TCP, true},
		{"GET / HTTP/1.1\r\n", HTTP1, false},
		{"POST /x HTTP/1.1", HTTP1, false},
		{"OPTIONS * HTTP/1.1", HTTP1, false},
		{"P", TCP, true}, // POST, PUT, PATCH or the h2 preface
		{"PRI * HTTP/2.0\r\n", TCP, true},
		{h2Preface, HTTP2, false},
		{h2Preface + "\x00\x00", HTTP2, false},
		{"\x16\x03\x01\x02\x00", TLS, false},
		{"\x16\x05", TCP, true},
		{"\x16\x05\x00", TCP, false},
		{"SSH-2.0-OpenSSH_9.2p1 Debian", TCP, false}, // 21 token bytes: too long for a method
		{"SSH-2.0-OpenSSH", TCP, true},
		// Any method the app's HTTP server would parse takes the HTTP path
		// (where the sidecar sets the identity headers), not a raw tunnel.
		{"get / HTTP/1.1", HTTP1, false},
		{"PROPFIND /dav HTTP/1.1", HTTP1, false},
		{"QUERY /x HTTP/1.1", HTTP1, false},
		{"FOO * HTTP/1.1", HTTP1, false},
		{"M-SEARCH http://a/ HTTP/1.1", HTTP1, false},
		{"GETX", TCP, true},
		{"GETX ", TCP, true},
		{"get key\r\n", TCP, false}, // memcached
		{"PING\r\n", TCP, false},    // redis
		{"\x00\x00\x00\x08", TCP, false},
	}
	for _, tt := range tests {
		got, more := classify([]byte(tt.in))
		if got != tt.want || more != tt.wantMore {
			t.Errorf("classify(%q) = %v, %v; want %v, %v", tt.in, got, more, tt.want, tt.wantMore)
		}
	}
}

// sniffPair runs Sniff on the server side of a real TCP connection while
// the client writes chunks with pauses between them.
func sniffPair(t *testing.T, wait time.Duration, chunks ...string) (Protocol, string, time.Duration) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		for _, ch := range chunks {
			c.Write([]byte(ch))
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(wait + 200*time.Millisecond)
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	start := time.Now()
	p, err := Sniff(conn, br, wait)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Sniff() error = %v", err)
	}
	// The sniffed bytes are still there for the next reader.
	conn.SetReadDeadline(time.Now().Add(time.Second))
	total := 0
	for _, ch := range chunks {
		total += len(ch)
	}
	buf := make([]byte, total)
	_, _ = io.ReadFull(br, buf)
	return p, string(buf), took
}

func TestSniffOverRealConnections(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   Protocol
	}{
		{"HTTP/1.1 in one write", []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}, HTTP1},
		{"HTTP/1.1 byte by byte", []string{"P", "U", "T", " /x HTTP/1.1\r\n"}, HTTP1},
		{"HTTP/2 preface split", []string{"PRI * HTTP/2.0\r\n", "\r\nSM\r\n\r\n"}, HTTP2},
		{"TLS ClientHello", []string{"\x16\x03\x01\x00\x05hello"}, TLS},
		{"client-first binary", []string{"\x00\x01\x02"}, TCP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, rest, _ := sniffPair(t, 500*time.Millisecond, tt.chunks...)
			if p != tt.want {
				t.Errorf("Sniff() = %v, want %v", p, tt.want)
			}
			if want := join(tt.chunks); rest != want {
				t.Errorf("after Sniff, the reader yields %q, want %q", rest, want)
			}
		})
	}
	t.Run("server-first protocol waits only the short delay", func(t *testing.T) {
		p, _, took := sniffPair(t, 100*time.Millisecond)
		if p != TCP || took > 400*time.Millisecond {
			t.Errorf("Sniff() of a silent client = %v after %s, want TCP after about 100ms", p, took)
		}
	})
}

func join(chunks []string) string {
	s := ""
	for _, c := range chunks {
		s += c
	}
	return s
}

// FuzzClassify: classify never panics, and a decided prefix stays decided
// the same way when more bytes arrive.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", h2Preface, "\x16\x03\x01", "PRI", "P", ""} {
		f.Add([]byte(s), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, prefix, extra []byte) {
		p, more := classify(prefix)
		if more {
			return
		}
		if p2, more2 := classify(append(append([]byte{}, prefix...), extra...)); p2 != p || more2 {
			t.Fatalf("classify(%q) = %v, decided; with %q appended = %v, %v", prefix, p, extra, p2, more2)
		}
	})
}
