package h2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// slowConn counts writes and takes a millisecond over each, as a
// congested socket would.
type slowConn struct {
	io.Writer
	writes atomic.Int32
}

func (c *slowConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	time.Sleep(time.Millisecond)
	return c.Writer.Write(p)
}

// Frames of many streams queued at once reach the peer whole, each
// stream's in order, in fewer writes than there were Queue calls.
func TestWriterCoalescesStreams(t *testing.T) {
	client, server := tcpPair(t)
	conn := &slowConn{Writer: client}
	w := NewWriter(conn, 0)
	const streams = 50
	body := bytes.Repeat([]byte("0123456789"), 300)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			<-start
			id := uint32(2*i + 1)
			err := w.Queue(func(f *Frames) {
				f.Headers(id, false, Field{":status", "200"}, Field{"x-stream", fmt.Sprint(id)})
				f.Data(id, body, true)
			})
			if err != nil {
				t.Errorf("Queue: %v", err)
			}
		})
	}
	got := make(chan map[uint32]string, 1)
	go func() { got <- readStreams(t, server, streams) }()
	close(start)
	wg.Wait()
	res := <-got
	for i := range streams {
		id := uint32(2*i + 1)
		if want := fmt.Sprintf("200 %d %s", id, body); res[id] != want {
			t.Errorf("stream %d: got %.40q..., want %.40q...", id, res[id], want)
		}
	}
	if n := conn.writes.Load(); n >= streams {
		t.Errorf("%d writes for %d Queue calls made at once: nothing was coalesced", n, streams)
	}
}

// readStreams reads frames until n streams have ended and returns, per
// stream, its :status, x-stream and data.
func readStreams(t *testing.T, c net.Conn, n int) map[uint32]string {
	fr := http2.NewFramer(nil, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	out := map[uint32]string{}
	for ended := 0; ended < n; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Errorf("ReadFrame: %v", err)
			return out
		}
		id := f.Header().StreamID
		end := false
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			out[id] = f.PseudoValue("status") + " "
			for _, hf := range f.RegularFields() {
				if hf.Name == "x-stream" {
					out[id] += hf.Value + " "
				}
			}
			end = f.StreamEnded()
		case *http2.DataFrame:
			out[id] += string(f.Data())
			end = f.StreamEnded()
		}
		if end {
			ended++
		}
	}
	return out
}

// A header block over one frame goes out as HEADERS and CONTINUATION.
func TestWriterSplitsLargeHeaderBlocks(t *testing.T) {
	client, server := tcpPair(t)
	w := NewWriter(client, 0)
	big := string(bytes.Repeat([]byte("v"), 40000))
	go w.Queue(func(f *Frames) { f.Headers(1, true, Field{":status", "200"}, Field{"x-stream", big}) })
	res := readStreams(t, server, 1)
	if want := "200 " + big + " "; res[1] != want {
		t.Errorf("a %d-byte field did not arrive whole", len(big))
	}
}

// A peer that stops reading holds up the writers once maxPending bytes
// wait, and they go on when it reads again.
func TestWriterBackpressure(t *testing.T) {
	client, server := net.Pipe() // unbuffered: a write waits for a read
	defer client.Close()
	defer server.Close()
	const maxPending = 64 << 10
	w := NewWriter(client, maxPending)
	chunk := make([]byte, 16<<10)
	var returned atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := w.Queue(func(f *Frames) { f.Data(1, chunk, false) }); err != nil {
				t.Errorf("Queue: %v", err)
			}
			returned.Add(1)
		})
	}
	// Nothing reads: the first call is stuck in Write, the others queue
	// until the bound and then wait.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		pending := len(w.pending)
		w.mu.Unlock()
		if pending > maxPending || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let any writer that would overrun do so
	w.mu.Lock()
	pending := len(w.pending)
	w.mu.Unlock()
	if limit := maxPending + len(chunk) + 9; pending > limit {
		t.Errorf("%d bytes pending with the peer not reading, want at most %d", pending, limit)
	}
	if n := returned.Load(); n == 20 {
		t.Error("every Queue call returned while the peer did not read")
	}
	go io.Copy(io.Discard, server)
	wg.Wait()
}

// After a failed write every Queue call returns the error, those waiting
// for room included.
func TestWriterErrorIsSticky(t *testing.T) {
	boom := errors.New("connection reset")
	w := NewWriter(failingWriter{boom}, 0)
	for range 2 {
		if err := w.Queue(func(f *Frames) { f.Data(1, make([]byte, 2000), true) }); !errors.Is(err, boom) {
			t.Fatalf("Queue after a failed write = %v, want %v", err, boom)
		}
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}
