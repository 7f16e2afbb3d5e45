package controlplane

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestConnectionCaps: one address cannot hold more than its share of the
// control plane's connections; a slot freed is taken again.
func TestConnectionCaps(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newLimitListener(raw, 3, 2)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	refused := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	s1, s2 := <-accepted, <-accepted
	if a3 := dial("127.0.0.1"); !refused(a3) {
		t.Error("a third connection from one address was accepted; the cap per source is 2")
	}
	b1 := dial("127.0.0.2")
	<-accepted
	if b2 := dial("127.0.0.2"); !refused(b2) {
		t.Error("a fourth connection in all was accepted; the cap is 3")
	}
	s1.Close()
	a1.Close()
	time.Sleep(50 * time.Millisecond)
	a4 := dial("127.0.0.1")
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(2 * time.Second):
		t.Error("a slot freed was not given to the next connection")
	}
	for _, c := range []net.Conn{a2, s2, b1, a4} {
		c.Close()
	}
}
