package h2

import (
	"fmt"
	"strconv"
	"time"

	"golang.org/x/net/http2"
)

// Stream is one stream of a Conn. Its Write methods may be called from
// any one goroutine at a time (per stream); Consumed from any.
type Stream struct {
	ID uint32
	// Value is the handler's own state for the stream.
	Value any

	c *Conn
	// Guarded by c.mu:
	sendWindow   int64
	recvWindow   int64 // receive window left
	recvCredit   int64 // consumed bytes not yet returned to the peer
	localEnded   bool  // END_STREAM sent
	remoteEnded  bool  // END_STREAM received
	gotFinal     bool  // a final (non-1xx) header section arrived (client role) or the request (server role)
	closed       bool  // removed from the connection
	declared     int64 // the peer's content-length; -1: none
	received     int64 // DATA bytes received
	noBodyExpect bool  // the response to a HEAD has no body whatever content-length says
}

// headers handles a HEADERS frame (with its CONTINUATIONs).
func (c *Conn) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	c.mu.Lock()
	st := c.streams[id]
	if st == nil {
		if !c.server || id%2 == 0 {
			idle := c.idleLocked(id)
			c.mu.Unlock()
			if idle || c.server {
				return http2.ConnectionError(http2.ErrCodeProtocol)
			}
			return nil // a response on a stream this side reset
		}
		if id <= c.lastPeerID {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.lastPeerID = id
		refuse := c.goingAway || uint32(c.activeLocked()) >= c.cfg.MaxConcurrentStreams
		c.mu.Unlock()
		if refuse {
			_ = c.w.Queue(func(q *Frames) { _ = q.Framer().WriteRSTStream(id, http2.ErrCodeRefusedStream) })
			return nil
		}
		return c.request(f)
	}
	if st.remoteEnded {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	trailers := st.gotFinal
	c.mu.Unlock()
	if trailers {
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
	} else if err := c.response(st, f); err != nil {
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	return c.deliverHeaders(st, f)
}

// request opens the stream a client's request starts (server role).
func (c *Conn) request(f *http2.MetaHeadersFrame) error {
	if listSize(f) > c.cfg.MaxHeaderListSize {
		// As net/http answers: 431, and the stream ends.
		_ = c.w.Queue(func(q *Frames) {
			q.Headers(f.StreamID, true, Field{":status", "431"}, Field{"content-length", "0"})
			if !f.StreamEnded() {
				_ = q.Framer().WriteRSTStream(f.StreamID, http2.ErrCodeNo)
			}
		})
		return nil
	}
	declared, err := checkRequest(f)
	if err != nil {
		_ = c.w.Queue(func(q *Frames) { _ = q.Framer().WriteRSTStream(f.StreamID, http2.ErrCodeProtocol) })
		return nil
	}
	c.mu.Lock()
	st := c.newStreamLocked(f.StreamID)
	st.gotFinal, st.declared = true, declared
	c.mu.Unlock()
	return c.deliverHeaders(st, f)
}

// listSize is a header section's size as SETTINGS_MAX_HEADER_LIST_SIZE
// counts it.
func listSize(f *http2.MetaHeadersFrame) uint32 {
	var n uint32
	for _, hf := range f.Fields {
		n += hf.Size()
	}
	return n
}

// response checks a response's header section (client role).
func (c *Conn) response(st *Stream, f *http2.MetaHeadersFrame) error {
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if err != nil || len(status) != 3 || code < 100 {
		return fmt.Errorf("h2: response status %q", status)
	}
	if err := checkFields(f); err != nil {
		return err
	}
	if code >= 200 || code == 101 {
		declared, err := contentLength(f)
		if err != nil {
			return err
		}
		c.mu.Lock()
		st.gotFinal = true
		if !st.noBodyExpect && code != 204 && code != 304 {
			st.declared = declared
		}
		c.mu.Unlock()
	} else if f.StreamEnded() {
		return fmt.Errorf("h2: an interim response ends the stream")
	}
	return nil
}

// deliverHeaders records the end of the peer's side, if f ends it, and
// hands f to the handler.
func (c *Conn) deliverHeaders(st *Stream, f *http2.MetaHeadersFrame) error {
	end := f.StreamEnded()
	if end {
		c.mu.Lock()
		if st.declared >= 0 && st.received != st.declared {
			c.mu.Unlock()
			c.resetStream(st.ID, http2.ErrCodeProtocol) // not the body content-length promised
			return nil
		}
		st.remoteEnded = true
		c.finishLocked(st)
		c.mu.Unlock()
	}
	c.handler.Headers(st, f, end)
	return nil
}

// finishLocked removes a stream both sides have ended.
func (c *Conn) finishLocked(st *Stream) {
	if st.localEnded && st.remoteEnded {
		c.removeLocked(st)
	}
	if c.goingAway && len(c.streams) == 0 {
		c.endIdleLocked()
	}
}

func (c *Conn) newStreamLocked(id uint32) *Stream {
	st := &Stream{ID: id, c: c, sendWindow: int64(c.peerWindow), recvWindow: int64(c.cfg.StreamWindow), declared: -1}
	c.streams[id] = st
	if c.idle != nil {
		c.idle.Stop()
	}
	return st
}

// data handles a DATA frame.
func (c *Conn) data(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	c.mu.Lock()
	if c.idleLocked(id) {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if c.recvWindow < n {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= n
	st := c.streams[id]
	if st == nil || st.remoteEnded || !st.gotFinal {
		// Closed, or DATA before a final response: the connection
		// window it used comes back at once.
		credit := c.creditLocked(nil, n)
		c.mu.Unlock()
		c.sendCredit(credit)
		if st == nil || st.remoteEnded {
			c.resetStream(id, http2.ErrCodeStreamClosed)
		} else {
			c.resetStream(id, http2.ErrCodeProtocol)
		}
		return nil
	}
	if st.recvWindow < n {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeFlowControl)
		return nil
	}
	st.recvWindow -= n
	data := f.Data()
	st.received += int64(len(data))
	end := f.StreamEnded()
	if st.declared >= 0 && (st.received > st.declared || end && st.received != st.declared) {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	// Padding is never the handler's: its window comes back now.
	credit := c.creditLocked(st, n-int64(len(data)))
	if end {
		st.remoteEnded = true
		c.finishLocked(st)
	}
	c.mu.Unlock()
	c.sendCredit(credit)
	c.handler.Data(st, data, end)
	return nil
}

// credit is the WINDOW_UPDATEs due: for the connection and one stream.
type credit struct {
	conn, stream uint32
	id           uint32
}

// creditLocked returns n consumed bytes of st (nil: of the connection
// only) to the receive windows, and says which WINDOW_UPDATEs are due: a
// window is refilled once half of it is used, so updates go out in large
// steps.
func (c *Conn) creditLocked(st *Stream, n int64) credit {
	var cr credit
	if n <= 0 {
		return cr
	}
	c.recvCredit += n
	if c.recvCredit >= int64(c.cfg.ConnWindow)/2 {
		cr.conn = uint32(c.recvCredit)
		c.recvWindow += c.recvCredit
		c.recvCredit = 0
	}
	if st != nil && !st.remoteEnded && !st.closed {
		st.recvCredit += n
		if st.recvCredit >= int64(c.cfg.StreamWindow)/2 {
			cr.stream, cr.id = uint32(st.recvCredit), st.ID
			st.recvWindow += st.recvCredit
			st.recvCredit = 0
		}
	}
	return cr
}

func (c *Conn) sendCredit(cr credit) {
	if cr.conn == 0 && cr.stream == 0 {
		return
	}
	_ = c.w.Queue(func(f *Frames) {
		if cr.conn > 0 {
			_ = f.Framer().WriteWindowUpdate(0, cr.conn)
		}
		if cr.stream > 0 {
			_ = f.Framer().WriteWindowUpdate(cr.id, cr.stream)
		}
	})
}

// Consumed returns to the peer the window of n bytes of s's body that the
// handler has passed on (from Data).
func (s *Stream) Consumed(n int) {
	s.c.mu.Lock()
	cr := s.c.creditLocked(s, int64(n))
	s.c.mu.Unlock()
	s.c.sendCredit(cr)
}

// NewStream opens a stream with a request's header section (client role),
// ending it at once when end; value becomes the stream's Value before any
// event for it can reach the handler. It fails with ErrMaxStreams when the
// peer's limit is reached and ErrGoingAway once the connection takes no
// new streams. head says the request is a HEAD (its response has no
// body).
func (c *Conn) NewStream(value any, head, end bool, fields ...Field) (*Stream, error) {
	// The ID is taken under the writer's lock, so streams open on the
	// wire in the order of their IDs.
	if err := c.w.lockRoom(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	var err error
	switch {
	case c.err != nil:
		err = c.err
	case c.goingAway || c.peerAway || c.nextID > 1<<31-1:
		err = ErrGoingAway
	case uint32(c.activeLocked()) >= c.peerMax:
		err = ErrMaxStreams
	}
	if err != nil {
		c.mu.Unlock()
		c.w.mu.Unlock()
		return nil, err
	}
	st := c.newStreamLocked(c.nextID)
	c.nextID += 2
	st.Value, st.noBodyExpect, st.localEnded = value, head, end
	c.mu.Unlock()
	(&Frames{w: c.w}).Headers(st.ID, end, fields...)
	if err := c.w.sendLocked(); err != nil {
		c.mu.Lock()
		c.removeLocked(st) // the caller has the error: no Closed follows
		c.mu.Unlock()
		return nil, err
	}
	return st, nil
}

// WriteHeaders sends a header section on s: a response (server role), or
// trailers (end then true).
func (s *Stream) WriteHeaders(end bool, fields ...Field) error {
	if err := s.endLocal(end); err != nil {
		return err
	}
	err := s.c.w.QueueHeaders(s.ID, end, fields...)
	s.c.queued(end)
	return err
}

// queued records that a stream's last frame, if last, is queued (see
// lastFrames).
func (c *Conn) queued(last bool) {
	if last {
		c.lastFrames.Done()
	}
}

// WriteHeadersData sends a header section that does not end s and, in
// the same write, as much of p as the send windows take now, ending s
// after it when end and all of p went. It returns how many bytes of p
// went; the caller sends the rest with WriteData. A response whose body
// is at hand leaves in one write instead of two.
func (s *Stream) WriteHeadersData(fields []Field, p []byte, end bool) (int, error) {
	c := s.c
	c.mu.Lock()
	if s.closed || s.localEnded {
		c.mu.Unlock()
		return 0, ErrStreamClosed
	}
	n, last, err := s.takeWindowLocked(len(p), end)
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	defer c.queued(last)
	if err := c.w.lockRoom(); err != nil {
		return 0, err
	}
	f := &Frames{w: c.w}
	f.Headers(s.ID, false, fields...)
	if n > 0 || last {
		f.Data(s.ID, p[:n], last)
	}
	return int(n), c.w.sendLocked()
}

// endLocal checks s can still be written and records that this side ends
// it, when end.
func (s *Stream) endLocal(end bool) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closed || s.localEnded {
		return ErrStreamClosed
	}
	if end {
		s.localEnded = true
		c.lastFrames.Add(1)
		c.finishLocked(s)
	}
	return nil
}

// WriteData sends p on s, ending the stream after it when end. It waits
// for send window as the peer grants it, so it must not be called on the
// connection's reader goroutine with a non-empty p.
func (s *Stream) WriteData(p []byte, end bool) error {
	c := s.c
	for len(p) > 0 {
		c.mu.Lock()
		if err := s.awaitWindowLocked(); err != nil {
			c.mu.Unlock()
			s.Reset(http2.ErrCodeCancel)
			return err
		}
		n, last, err := s.takeWindowLocked(len(p), end)
		c.mu.Unlock()
		if err != nil {
			return err
		}
		err = c.w.QueueData(s.ID, p[:n], last)
		c.queued(last)
		if err != nil {
			return err
		}
		p = p[n:]
	}
	if end && len(p) == 0 {
		// Only an empty p is left to end the stream with.
		c.mu.Lock()
		done := s.localEnded
		c.mu.Unlock()
		if !done {
			if err := s.endLocal(true); err != nil {
				return err
			}
			err := c.w.QueueData(s.ID, nil, true)
			c.queued(true)
			return err
		}
	}
	return nil
}

// TryWriteData sends as much of p on s as the send windows take now,
// without waiting, ending the stream after it when end and all of p
// went; it returns how many bytes went. It may be called on the reader
// goroutine (it waits only while the connection's writer is backed up,
// as every frame queued there does).
func (s *Stream) TryWriteData(p []byte, end bool) (int, error) {
	c := s.c
	c.mu.Lock()
	n, last, err := s.takeWindowLocked(len(p), end)
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if n == 0 && !last {
		return 0, nil
	}
	err = c.w.QueueData(s.ID, p[:n], last)
	c.queued(last)
	return int(n), err
}

// takeWindowLocked takes send window for up to size bytes of s (c.mu
// held) and records that this side ends s when end and all of them fit.
func (s *Stream) takeWindowLocked(size int, end bool) (n int64, last bool, err error) {
	c := s.c
	if s.closed || c.err != nil || s.localEnded {
		return 0, false, ErrStreamClosed
	}
	n = min(int64(size), max(s.sendWindow, 0), max(c.sendWindow, 0))
	s.sendWindow -= n
	c.sendWindow -= n
	c.dataSent += n
	last = end && n == int64(size)
	if last {
		s.localEnded = true
		c.lastFrames.Add(1) // the caller queues the frame, then calls queued
		c.finishLocked(s)
	}
	return n, last, nil
}

// awaitWindowLocked waits (c.mu held) until s may send, it is closed, or
// the connection ends; ErrStalled if the window stays shut for the write
// idle timeout.
func (s *Stream) awaitWindowLocked() error {
	c := s.c
	var timer *time.Timer
	expired := false
	for !s.closed && c.err == nil && (s.sendWindow <= 0 || c.sendWindow <= 0) {
		if expired {
			return ErrStalled
		}
		if timer == nil && c.cfg.WriteIdleTimeout > 0 {
			timer = time.AfterFunc(c.cfg.WriteIdleTimeout, func() {
				c.mu.Lock()
				expired = true
				c.mu.Unlock()
				c.windowReady.Broadcast()
			})
			defer timer.Stop()
		}
		c.windowReady.Wait()
	}
	return nil
}

// Reset ends s with RST_STREAM and code, from any goroutine. The handler
// is not told (its caller knows): no event for s starts afterwards,
// though one already under way on the reader goroutine finishes.
func (s *Stream) Reset(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	open := !s.closed
	c.removeLocked(s)
	c.mu.Unlock()
	if open {
		_ = c.w.Queue(func(f *Frames) { _ = f.Framer().WriteRSTStream(s.ID, code) })
	}
}
