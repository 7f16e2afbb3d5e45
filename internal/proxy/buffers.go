package proxy

import (
	"net"
	"sync"
)

// bufferPool recycles byte buffers of one size; it is also the reverse
// proxies' httputil.BufferPool. The pool holds each buffer in a *[]byte
// box, and the boxes are recycled too, so neither Get nor Put allocates
// once the pool is warm.
type bufferPool struct {
	size  int
	pool  sync.Pool // *[]byte holding a buffer
	boxes sync.Pool // *[]byte holding nil
}

func (b *bufferPool) Get() []byte {
	if box, ok := b.pool.Get().(*[]byte); ok {
		buf := *box
		*box = nil
		b.boxes.Put(box)
		return buf
	}
	return make([]byte, b.size)
}

// Put keeps buf for the next Get, unless it grew far past the pool's
// size (the pool would hold on to the largest buffers).
func (b *bufferPool) Put(buf []byte) {
	if cap(buf) > 4*b.size {
		return
	}
	box, ok := b.boxes.Get().(*[]byte)
	if !ok {
		box = new([]byte)
	}
	*box = buf
	b.pool.Put(box)
}

// copyBuffers are the buffers the reverse proxies copy bodies through.
// Without them each request allocated (and zeroed) 32 KiB: three quarters
// of the proxy's allocation, and most of its GC work.
var copyBuffers = &bufferPool{size: 32 << 10}

// scanBuffers are the HTTP/1.1 guards' scan buffers, shared between
// connections.
var scanBuffers = &bufferPool{size: 16 << 10}

// headBuffers are where the engine builds a response head for an app
// connection, with the body bytes that join it in one write; each goes
// back once written (write copies what the socket does not take).
var headBuffers = &bufferPool{size: 4 << 10}

// readBuffers are the engine's connection read buffers, held only while
// bytes wait to be parsed or forwarded (the way to a few KiB per idle
// kept-alive connection).
var readBuffers = &bufferPool{size: 16 << 10}

// getReadBuffer and putReadBuffer are readBuffers' methods as values made
// once, for rawio.Conn.ReadPooled (a method value made per call
// allocates).
var getReadBuffer, putReadBuffer = readBuffers.Get, readBuffers.Put

// readBuf is a connection's read buffer in the engine: buf holds what was
// read and not consumed yet, a window of base, which is from readBuffers
// (or larger, for a large head) and nil while nothing waits.
type readBuf struct {
	buf  []byte
	base []byte
}

// fill reads more of c into buf. With nothing buffered it gives the
// buffer back and waits for the socket without one, taking one only once
// bytes are there (raw I/O; otherwise it reads into a fresh one).
func (r *readBuf) fill(c net.Conn) error {
	if len(r.buf) == 0 {
		r.drop()
		if rc := rawConn(c); rc != nil {
			buf, n, err := rc.ReadPooled(getReadBuffer, putReadBuffer)
			if buf != nil {
				r.base, r.buf = buf, buf[:n]
			}
			return err
		}
		r.base = readBuffers.Get()
		r.buf = r.base[:0]
	}
	if cap(r.buf)-len(r.buf) < 4<<10 {
		if len(r.buf) <= cap(r.base)/2 {
			r.buf = append(r.base[:0], r.buf...) // consumed bytes make room
		} else { // a large head or body piece: a larger buffer, not pooled
			larger := append(make([]byte, 0, 2*cap(r.buf)+16<<10), r.buf...)
			r.drop() // only once its bytes are copied out
			r.base, r.buf = larger, larger
		}
	}
	n, err := c.Read(r.buf[len(r.buf):cap(r.buf)])
	r.buf = r.buf[:len(r.buf)+n]
	return err
}

// drop gives the buffer back to the pool: nothing may point into it any
// more.
func (r *readBuf) drop() {
	if cap(r.base) == readBuffers.size {
		readBuffers.Put(r.base[:cap(r.base)])
	}
	r.base, r.buf = nil, nil
}
