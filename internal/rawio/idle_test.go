package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// waitOf starts a WaitReadable on c and returns where its one result
// arrives.
func waitOf(c *Conn, timeout time.Duration) <-chan error {
	got := make(chan error, 2) // a second call would show
	c.WaitReadable(timeout, func(err error) { got <- err })
	return got
}

func result(t *testing.T, got <-chan error) error {
	t.Helper()
	select {
	case err := <-got:
		select {
		case again := <-got:
			t.Errorf("ready was called twice: %v, then %v", err, again)
		case <-time.After(50 * time.Millisecond):
		}
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("ready was not called")
		return nil
	}
}

// A wait ends once with what happened first: bytes to read, the peer's
// close, the timeout, or this side's Close.
func TestWaitReadable(t *testing.T) {
	client, server := pair(t)
	got := waitOf(server, 5*time.Second)
	time.Sleep(50 * time.Millisecond)
	client.Write([]byte("x"))
	if err := result(t, got); err != nil {
		t.Fatalf("bytes arrived: ready(%v), want nil", err)
	}
	if n, err := server.Read(make([]byte, 4)); n != 1 || err != nil {
		t.Errorf("the read after the wait: %d, %v", n, err)
	}
	// Again on the same connection: the peer closes.
	got = waitOf(server, 5*time.Second)
	client.Close()
	if err := result(t, got); err != nil {
		t.Fatalf("the peer closed: ready(%v), want nil", err)
	}
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the read after the peer's close: %v, want EOF", err)
	}

	_, server = pair(t)
	start := time.Now()
	if err := result(t, waitOf(server, 100*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("nothing came: ready(%v) after %v, want the deadline after 100ms", err, time.Since(start))
	}

	_, server = pair(t)
	got = waitOf(server, time.Minute)
	server.Close()
	if err := result(t, got); !errors.Is(err, net.ErrClosed) {
		t.Errorf("closed while waiting: ready(%v), want net.ErrClosed", err)
	}
}

// Waiting connections hold no goroutine each.
func TestWaitReadableHoldsNoGoroutinePerConnection(t *testing.T) {
	const n = 200
	clients, servers := make([]*Conn, n), make([]*Conn, n)
	for i := range n {
		clients[i], servers[i] = pair(t)
	}
	runtime.GC()
	before := runtime.NumGoroutine()
	got := make(chan error, n)
	for _, s := range servers {
		s.WaitReadable(time.Minute, func(err error) { got <- err })
	}
	if grew := runtime.NumGoroutine() - before; grew > 10 {
		t.Errorf("%d waiting connections added %d goroutines", n, grew)
	}
	for _, c := range clients {
		c.Write([]byte("x"))
	}
	for range n {
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not every wait ended")
		}
	}
}
