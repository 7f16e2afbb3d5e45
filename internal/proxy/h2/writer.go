// Package h2 is the request path's HTTP/2 connection engine, built on
// golang.org/x/net/http2's Framer and hpack the way grpc-go's transport is.
// So far it holds the write side: Writer, which coalesces the frames of
// all of a connection's streams into as few writes as scheduling allows.
// The proxy's engines (internal/proxy) import it; the floor relay of
// bench/proxybench uses it too.
package h2

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// smallBatch is the size under which a sender yields once before writing,
// so that other streams' frames can join the write (grpc-go's loopy writer
// does the same for small batches). It is one full TLS record: a response
// of a few KiB still waits for others, which at saturation cut the pair's
// CPU per request by a tenth (bench/RESULTS.md); with nothing else to run
// the yield costs a scheduler pass.
const smallBatch = 16 << 10

// DefaultMaxPending bounds the bytes a Writer holds unsent when
// NewWriter is given no bound.
const DefaultMaxPending = 4 << 20

// Writer queues frames for one connection from any goroutine and sends
// them without a goroutine of its own: the goroutine that queues frames
// while no write is under way sends everything pending, including what
// others queue meanwhile, until nothing is. Frames of one Queue call are
// sent together and in order; calls are sent in the order they took the
// lock.
type Writer struct {
	conn       io.Writer
	maxPending int
	idle       time.Duration // a batch's write deadline (Config.WriteIdleTimeout); 0: none

	mu sync.Mutex
	// Guarded by mu:
	pending []byte // queued, not yet handed to conn
	spare   []byte // the last batch's buffer, reused for the next
	writing bool   // a goroutine is sending; others only queue
	err     error  // the first write error; every later call returns it
	room    sync.Cond
	fr      *http2.Framer // writes into pending
	enc     *hpack.Encoder
	hbuf    bytes.Buffer // the header block being encoded
}

// NewWriter returns a Writer sending to conn. Queue blocks while more than
// maxPending bytes wait to be sent (0: DefaultMaxPending), so a peer that
// stops reading holds up its writers instead of growing memory.
func NewWriter(conn io.Writer, maxPending int) *Writer {
	if maxPending <= 0 {
		maxPending = DefaultMaxPending
	}
	w := &Writer{conn: conn, maxPending: maxPending}
	w.room.L = &w.mu
	w.fr = http2.NewFramer(pendingWriter{w}, nil)
	w.enc = hpack.NewEncoder(&w.hbuf)
	return w
}

// pendingWriter appends what the framer writes to pending (mu held).
type pendingWriter struct{ w *Writer }

func (p pendingWriter) Write(b []byte) (int, error) {
	p.w.pending = append(p.w.pending, b...)
	return len(b), nil
}

// Queue runs fn, which adds frames through its Frames, under the Writer's
// lock, and then sends what is pending unless another goroutine is
// already sending it. fn must not block. Queue returns the connection's
// first write error, if any, once it happened (its frames are then
// dropped); it may block while the connection is backed up.
func (w *Writer) Queue(fn func(*Frames)) error {
	if err := w.lockRoom(); err != nil {
		return err
	}
	fn(&Frames{w: w})
	return w.sendLocked()
}

// QueueHeaders is Queue of one Frames.Headers, without a closure to
// allocate.
func (w *Writer) QueueHeaders(id uint32, end bool, fields ...Field) error {
	if err := w.lockRoom(); err != nil {
		return err
	}
	(&Frames{w: w}).Headers(id, end, fields...)
	return w.sendLocked()
}

// QueueData is Queue of one Frames.Data, without a closure to allocate.
func (w *Writer) QueueData(id uint32, p []byte, end bool) error {
	if err := w.lockRoom(); err != nil {
		return err
	}
	(&Frames{w: w}).Data(id, p, end)
	return w.sendLocked()
}

// lockRoom takes the lock once the pending bytes are under the bound; it
// returns the write error, unlocked, if there was one.
func (w *Writer) lockRoom() error {
	w.mu.Lock()
	for w.err == nil && len(w.pending) > w.maxPending {
		w.room.Wait()
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	return nil
}

// sendLocked sends pending unless another goroutine is; it releases mu.
func (w *Writer) sendLocked() error {
	if w.writing {
		w.mu.Unlock()
		return nil
	}
	w.writing = true
	yielded := false
	for len(w.pending) > 0 && w.err == nil {
		if len(w.pending) < smallBatch && !yielded {
			yielded = true
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
			continue
		}
		out := w.pending
		w.pending = w.spare[:0]
		w.room.Broadcast()
		w.mu.Unlock()
		if d, ok := w.conn.(interface{ SetWriteDeadline(time.Time) error }); ok && w.idle > 0 {
			_ = d.SetWriteDeadline(time.Now().Add(w.idle))
		}
		_, err := w.conn.Write(out)
		w.mu.Lock()
		w.spare = out[:0]
		if err != nil {
			w.err = err
			w.pending = nil
			w.room.Broadcast()
		}
	}
	w.writing = false
	w.room.Broadcast() // CloseWrite waits for the last batch
	err := w.err
	w.mu.Unlock()
	return err
}

// ErrWriterClosed is returned by Queue after CloseWrite.
var ErrWriterClosed = errors.New("h2: the connection's sending side is closed")

// CloseWrite sends what is pending and then ends the connection's
// sending side (CloseWrite, where the connection has one), so the peer
// reads everything queued before it and then the end of the stream. Later
// Queue calls return ErrWriterClosed.
func (w *Writer) CloseWrite() error {
	if err := w.Queue(func(*Frames) {}); err != nil {
		return err
	}
	w.mu.Lock()
	for w.err == nil && (w.writing || len(w.pending) > 0) {
		w.room.Wait()
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.err = ErrWriterClosed
	w.room.Broadcast()
	w.mu.Unlock()
	if cw, ok := w.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Frames adds frames to a Writer's pending bytes inside Queue; it is
// valid only during the call.
type Frames struct{ w *Writer }

// Field is one header field to encode.
type Field struct{ Name, Value string }

// Headers queues a HEADERS frame of fields, ending the stream when end;
// a block over maxFrame is split into CONTINUATION frames.
func (f *Frames) Headers(id uint32, end bool, fields ...Field) {
	w := f.w
	w.hbuf.Reset()
	for _, hf := range fields {
		_ = w.enc.WriteField(hpack.HeaderField{Name: hf.Name, Value: hf.Value})
	}
	block := w.hbuf.Bytes()
	first := block[:min(len(block), maxFrame)]
	_ = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(first) == len(block), EndStream: end})
	for block = block[len(first):]; len(block) > 0; {
		n := min(len(block), maxFrame)
		_ = w.fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
}

// maxFrame is the largest frame payload sent: the default
// SETTINGS_MAX_FRAME_SIZE, which every peer accepts.
const maxFrame = 16384

// Data queues p as DATA frames of at most the default frame size, the
// last ending the stream when end. An empty p with end queues one empty
// frame that ends the stream.
func (f *Frames) Data(id uint32, p []byte, end bool) {
	for {
		n := min(len(p), maxFrame)
		_ = f.w.fr.WriteData(id, end && n == len(p), p[:n])
		if p = p[n:]; len(p) == 0 {
			return
		}
	}
}

// Framer is the Writer's framer for the frames without a helper here
// (SETTINGS, WINDOW_UPDATE, PING, RST_STREAM, GOAWAY); its writes cannot
// fail.
func (f *Frames) Framer() *http2.Framer { return f.w.fr }

// Raw queues bytes as they are (the client preface).
func (f *Frames) Raw(b []byte) { f.w.pending = append(f.w.pending, b...) }
