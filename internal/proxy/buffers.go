package proxy

import "sync"

// bufferPool recycles byte buffers of one size; it is also the reverse
// proxies' httputil.BufferPool.
type bufferPool struct {
	size int
	pool sync.Pool
}

func (b *bufferPool) Get() []byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, b.size)
}

func (b *bufferPool) Put(buf []byte) { b.pool.Put(&buf) }

// copyBuffers are the buffers the reverse proxies copy bodies through.
// Without them each request allocated (and zeroed) 32 KiB: three quarters
// of the proxy's allocation, and most of its GC work.
var copyBuffers = &bufferPool{size: 32 << 10}

// scanBuffers are the HTTP/1.1 guards' scan buffers, shared between
// connections.
var scanBuffers = &bufferPool{size: 16 << 10}
