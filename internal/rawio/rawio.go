// Package rawio gives TCP connections reads and writes that are raw system
// calls made inside the netpoller's readiness callbacks
// (syscall.RawConn), as cloudwego/netpoll does. The goroutine still parks
// and wakes with the netpoller, and deadlines hold, but the Go runtime
// never enters its syscall path: it does not hand the thread's P to
// another thread while a loopback or veth write does the receiver's TCP
// work inline. On this project's benchmark machine that halves the
// context switches of a proxied request (bench/RESULTS.md, "The request
// path's floor").
//
// The proxy (internal/proxy) uses it for the sockets of its HTTP paths;
// crypto/tls runs over a Conn unchanged. Built with -race, the calls go
// through package syscall instead, for the race detector's sake
// (sys_race.go).
package rawio

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// Conn is a TCP connection whose Read and Write are raw system calls; its
// other methods (deadlines, CloseWrite, addresses) are *net.TCPConn's.
// Like net.Conn, it may be used from many goroutines at once: reads are
// serialised, and so are writes (net/http writes a request's last bytes
// while an Upgrade's copier writes the stream after 101).
type Conn struct {
	*net.TCPConn
	rc      syscall.RawConn
	waiting atomic.Uint64 // the WaitReadable under way, 0 if none
	// rd and wr are the read and the write under way, each guarded by
	// its mutex: the callbacks RawConn runs are bound to them once, so a
	// call allocates nothing.
	rmu, wmu            sync.Mutex
	rd, wr              op
	read, pooled, write func(fd uintptr) bool
}

// op is one read or write: its buffer, the callbacks' results, and for
// a pooled read where buffers come from. Only its own Read (or Write)
// touches it, and it holds no buffer between calls.
type op struct {
	p     []byte
	n     int
	errno syscall.Errno
	wait  bool // write: park until the socket takes all of p
	get   func() []byte
	put   func([]byte)
}

// Wrap returns c with raw reads and writes when it is a *net.TCPConn, and
// c itself otherwise (a Unix socket, a test pipe).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rw := &Conn{TCPConn: tc, rc: rc}
	rw.read, rw.pooled, rw.write = rw.rd.readOnce, rw.rd.readPooled, rw.wr.writeAll
	return rw
}

// Read reads once what the socket holds, waiting for it as net does. At
// the end of the stream it returns io.EOF; past a read deadline,
// os.ErrDeadlineExceeded; on a closed Conn, net.ErrClosed.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rd.p = p
	err := c.rc.Read(c.read)
	c.rd.p = nil
	return c.readResult(c.rd.n, c.rd.errno, err)
}

func (o *op) readOnce(fd uintptr) bool {
	o.n, o.errno = rawRead(fd, o.p)
	return o.errno != syscall.EAGAIN
}

// ReadPooled waits until the socket is readable and only then takes a
// buffer from get, reads into it and returns it with the count read. An
// idle connection thus holds no read buffer while it waits. When the read
// fails the buffer is handed back to put (which may be nil) and nil is
// returned with the error. get and put should be values made once (a
// method value made per call allocates).
func (c *Conn) ReadPooled(get func() []byte, put func([]byte)) ([]byte, int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rd.get, c.rd.put = get, put
	err := c.rc.Read(c.pooled)
	buf := c.rd.p
	c.rd.p, c.rd.get, c.rd.put = nil, nil, nil
	n, err := c.readResult(c.rd.n, c.rd.errno, err)
	if err != nil && buf != nil {
		if put != nil {
			put(buf)
		}
		buf = nil
	}
	return buf, n, err
}

func (o *op) readPooled(fd uintptr) bool {
	if o.p == nil {
		o.p = o.get()
	}
	if o.n, o.errno = rawRead(fd, o.p); o.errno == syscall.EAGAIN {
		if o.put != nil {
			o.put(o.p) // not ready: park without it
		}
		o.p = nil
		return false
	}
	return true
}

func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, e := sysRead(fd, p)
		if e != syscall.EINTR {
			return n, e
		}
	}
}

func (c *Conn) readResult(n int, errno syscall.Errno, err error) (int, error) {
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting for room in the socket as net does; it
// returns fewer bytes only with an error (past the write deadline,
// os.ErrDeadlineExceeded).
func (c *Conn) Write(p []byte) (int, error) { return c.writeOp(p, true) }

// TryWrite writes what of p the socket takes now, without waiting for
// room: a goroutine that must not block (an HTTP/2 connection's reader
// relaying a response) writes what it can and hands the rest to one that
// may wait. It returns the bytes written, fewer than len(p) when the
// socket was full, and an error only when the write failed.
func (c *Conn) TryWrite(p []byte) (int, error) { return c.writeOp(p, false) }

func (c *Conn) writeOp(p []byte, wait bool) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wr.p, c.wr.n, c.wr.errno, c.wr.wait = p, 0, 0, wait
	err := c.rc.Write(c.write)
	done, errno := c.wr.n, c.wr.errno
	c.wr.p = nil
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return done, c.opError("write", err)
	}
	return done, nil
}

// writeAll writes o.p from o.n on; it reports done when all is written,
// the write failed, or the socket is full and o.wait is false.
func (o *op) writeAll(fd uintptr) bool {
	for o.n < len(o.p) {
		n, e := sysWrite(fd, o.p[o.n:])
		switch e {
		case 0:
			o.n += n
		case syscall.EAGAIN:
			return !o.wait // full: park until writable, or give up
		case syscall.EINTR:
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// opError names the operation and the connection's addresses in err, as
// net.OpError does for net's own calls, keeping errors.Is(err,
// os.ErrDeadlineExceeded) and net.ErrClosed true.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// ReadFrom copies r into the connection through Write: TCPConn's own
// would splice through the runtime's syscall path.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(writerOnly{c}, r) }

// WriteTo copies the connection to w through Read (see ReadFrom).
func (c *Conn) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, readerOnly{c}) }

// writerOnly and readerOnly hide ReadFrom and WriteTo from io.Copy, which
// would call back into them.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
