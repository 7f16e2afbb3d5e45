package safehttp

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// A client that sends headers byte by byte is cut off by the header
// timeout instead of holding the connection forever.
func TestSlowHeadersAreCutOff(t *testing.T) {
	srv := Server(http.NotFoundHandler())
	srv.ReadHeaderTimeout = 200 * time.Millisecond // shortened for the test
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("connection with unfinished headers lived %s, want it closed after the header timeout", d)
	}
	if s := Server(nil); s.MaxHeaderBytes != 64<<10 || s.IdleTimeout == 0 || s.WriteTimeout == 0 {
		t.Errorf("Server() limits = %+v", s)
	}
}
