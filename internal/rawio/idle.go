package rawio

import (
	"errors"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Idle keep-alive connections are waited for by one epoll instance and
// one goroutine in all, so that a connection between requests holds no
// goroutine (a goroutine that has served a request keeps a stack of 8 KiB
// or more while it is parked). Go's netpoller has no way to wait for many
// sockets with one goroutine; this poller does only that: it registers a
// socket once (one-shot), and on its first event hands it back.

// WaitReadable calls ready exactly once, on a goroutine of its own: with
// nil once c has bytes to read or its peer closed or reset it (the next
// Read says which); with os.ErrDeadlineExceeded when timeout passes
// first; with net.ErrClosed when c is closed first. Meanwhile no
// goroutine waits for c. Only one wait per Conn may be under way, and no
// Read meanwhile.
func (c *Conn) WaitReadable(timeout time.Duration, ready func(error)) {
	if err := idle.start(); err != nil || idle.broken.Load() {
		// No epoll: a goroutine waits, as net would.
		go func() { ready(c.waitReadable(timeout)) }()
		return
	}
	idle.add(c, timeout, ready)
}

// waitReadable waits in the netpoller until c is readable or timeout
// passes.
func (c *Conn) waitReadable(timeout time.Duration) error {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	err := c.rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

// Close closes the connection; a WaitReadable under way ends with
// net.ErrClosed.
func (c *Conn) Close() error {
	if id := c.waiting.Load(); id != 0 {
		idle.finish(id, net.ErrClosed)
	}
	return c.TCPConn.Close()
}

// idlePoller is the epoll instance and the goroutine that waits on it.
type idlePoller struct {
	once   sync.Once
	epfd   int
	err    error
	broken atomic.Bool // epoll_wait failed: waits are net's from then on

	mu    sync.Mutex
	next  uint64               // the last wait's id
	waits map[uint64]*idleWait // guarded by mu
}

type idleWait struct {
	c     *Conn
	ready func(error)
	timer *time.Timer
}

var idle idlePoller

func (p *idlePoller) start() error {
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err == nil {
			p.waits = map[uint64]*idleWait{}
			go p.run()
		}
	})
	return p.err
}

func (p *idlePoller) add(c *Conn, timeout time.Duration, ready func(error)) {
	p.mu.Lock()
	p.next++
	id := p.next
	w := &idleWait{c: c, ready: ready}
	p.waits[id] = w
	c.waiting.Store(id)
	// Under the lock: finish (from the timer, or an early event) waits
	// until the wait is whole.
	w.timer = time.AfterFunc(timeout, func() { p.finish(id, os.ErrDeadlineExceeded) })
	p.mu.Unlock()
	var ctlErr error
	err := c.rc.Control(func(fd uintptr) { // the fd stays open meanwhile
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
		ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	switch {
	case err != nil: // closed meanwhile
		p.finish(id, net.ErrClosed)
	case ctlErr != nil: // e.g. out of memory: the wait is net's
		if p.take(id) != nil {
			go func() { ready(c.waitReadable(timeout)) }()
		}
	}
}

// take removes and returns wait id, or nil if it has ended already.
func (p *idlePoller) take(id uint64) *idleWait {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.waits[id]
	if w == nil {
		return nil
	}
	delete(p.waits, id)
	w.c.waiting.CompareAndSwap(id, 0)
	w.timer.Stop()
	return w
}

// finish ends wait id, if it is still under way, with err.
func (p *idlePoller) finish(id uint64, err error) {
	w := p.take(id)
	if w == nil {
		return
	}
	_ = w.c.rc.Control(func(fd uintptr) { // a closed fd has left the epoll set already
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	go w.ready(err)
}

func (p *idlePoller) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // a bug (the fd is ours alone): wake every wait, poll no more
			p.broken.Store(true)
			p.mu.Lock()
			ids := slices.Collect(maps.Keys(p.waits))
			p.mu.Unlock()
			for _, id := range ids {
				p.finish(id, nil)
			}
			return
		}
		for _, ev := range events[:n] {
			p.finish(uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32, nil)
		}
	}
}
