package h2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Config is what a Conn advertises to its peer. The zero value is the
// defaults.
type Config struct {
	// MaxConcurrentStreams the peer may open at once (server role);
	// default 100.
	MaxConcurrentStreams uint32
	// StreamWindow is the receive window of each stream; default 1 MiB.
	StreamWindow uint32
	// ConnWindow is the receive window of the connection; default 4 MiB.
	ConnWindow uint32
	// MaxHeaderListSize bounds a header section, decoded; default 64 KiB.
	MaxHeaderListSize uint32
	// PrefaceTimeout bounds the wait for the client's preface and first
	// SETTINGS (server role); default 10 s.
	PrefaceTimeout time.Duration
	// Budgets bound what the peer may send per second; the zero value
	// sets no bound.
	Budgets Budgets
	// OnFlood, if set, is called on the reader goroutine with what the
	// peer flooded, before the connection ends with ENHANCE_YOUR_CALM.
	OnFlood func(what string)
	// IdleTimeout ends, with GOAWAY, a connection that has had no open
	// stream for that long. 0: no bound.
	IdleTimeout time.Duration
	// WriteIdleTimeout bounds how long a write may make no progress
	// (a peer that stopped reading): a stream whose send window stays
	// shut that long is reset (CANCEL), and a connection whose socket
	// takes nothing that long ends. 0: no bound.
	WriteIdleTimeout time.Duration
}

// Budgets are what a peer may send each second on one connection: frames
// that are cheap to send and cost the receiver work with no request to
// show for it (Rapid Reset, CVE-2023-44487; PING and SETTINGS floods),
// and decoded header bytes (HPACK bombs: blocks cheap on the wire and
// expensive to decode). A header section that decodes to over four times
// MaxHeaderListSize always ends the connection. Zero fields: no bound.
type Budgets struct {
	Resets   int // RST_STREAM frames
	Settings int // SETTINGS frames, not counting ACKs
	// Pings are PING frames, not counting ACKs; each request's HEADERS
	// earns two more, and a PING that follows 1 KiB or more of DATA this
	// side sent is free: gRPC's bandwidth estimator pings as data
	// arrives, as often as once a round trip while a large message
	// streams (grpc-go's own server counts a ping against a client only
	// when it sent no data).
	Pings       int
	HeaderBytes int // decoded header bytes (RFC 9113's size: name + value + 32)
	// Clock tells the time the budgets' seconds are counted by; nil:
	// time.Now. A test stops it to send a second's worth at any speed.
	Clock func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxConcurrentStreams, 100)
	def(&c.StreamWindow, 1<<20)
	def(&c.ConnWindow, 4<<20)
	def(&c.MaxHeaderListSize, 64<<10)
	if c.OnFlood == nil {
		c.OnFlood = func(string) {}
	}
	if c.PrefaceTimeout == 0 {
		c.PrefaceTimeout = 10 * time.Second
	}
	return c
}

// Handler receives a connection's stream events on its reader goroutine,
// in the order the frames arrived. Its methods must not block: work that
// waits (a write to a slow socket, a stream's send window) goes to another
// goroutine, and flow control bounds what it must hold meanwhile.
type Handler interface {
	// Headers delivers a stream's header section: a request, on a new
	// stream (server role); a response, interim (1xx) or final (client
	// role); or trailers. end says the peer ended the stream with it. f
	// is valid during the call only.
	Headers(s *Stream, f *http2.MetaHeadersFrame, end bool)
	// Data delivers the next bytes of a stream's body, valid during the
	// call only; end says the peer ended the stream. The window they used
	// goes back to the peer only once s.Consumed is called for them.
	Data(s *Stream, p []byte, end bool)
	// Closed says a stream ended before both sides finished it: the peer
	// reset it or the engine did for a protocol error (a StreamError with
	// the code), or the connection ended. Nothing else is delivered for s
	// afterwards. A stream this side ends with Stream.Reset is not
	// reported.
	Closed(s *Stream, err error)
}

// A Drainer is a Handler told each time the reader has handled every
// frame it has read and is about to wait for more. A handler may hold a
// write back to join one that usually follows in the same read (a
// response head and its body); what it still holds must go out then.
type Drainer interface {
	Drained()
}

// Errors a Conn returns.
var (
	// ErrMaxStreams: the peer's MAX_CONCURRENT_STREAMS are all open; open
	// another connection or wait.
	ErrMaxStreams = errors.New("h2: the peer's concurrent stream limit is reached")
	// ErrGoingAway: the connection takes no new streams (GOAWAY sent or
	// received).
	ErrGoingAway = errors.New("h2: the connection is going away")
	// ErrStreamClosed: the stream was reset or has ended.
	ErrStreamClosed = errors.New("h2: stream closed")
	// ErrStalled: the peer granted no send window for WriteIdleTimeout;
	// the stream was reset.
	ErrStalled = errors.New("h2: the peer granted no send window for the write idle timeout")
)

// Conn is one HTTP/2 connection in the server or the client role. Run
// reads it; Streams are written from any goroutine.
type Conn struct {
	conn    net.Conn
	cfg     Config
	server  bool
	handler Handler
	rd      *http2.Framer
	br      *bufio.Reader // rd's
	drainer Drainer       // the handler, if it is one
	w       *Writer
	spent   spending // the reader's only
	pinged  int64    // dataSent at the peer's last PING; the reader's only

	mu sync.Mutex
	// Guarded by mu:
	streams    map[uint32]*Stream
	lastPeerID uint32 // highest stream ID the peer opened (server role)
	nextID     uint32 // the next stream ID to open (client role)
	peerMax    uint32 // the peer's MAX_CONCURRENT_STREAMS
	peerWindow int32  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	sendWindow int64  // connection send window
	dataSent   int64  // DATA bytes sent, in all
	recvWindow int64  // connection receive window left
	recvCredit int64  // consumed bytes not yet returned to the peer
	goingAway  bool   // this side sent GOAWAY: it closes once no stream is open
	peerAway   bool   // the peer sent GOAWAY: no new streams
	ending     bool   // endIdleLocked ran
	// lastFrames counts streams this side has ended whose last frame is
	// not queued yet: the end is recorded under mu, the frame queued
	// after. A drain closes the sending side only once they are queued.
	lastFrames  sync.WaitGroup
	settled     chan struct{} // closed when the peer's first SETTINGS is applied
	idle        *time.Timer   // IdleTimeout's, running while no stream is open; nil without one
	err         error         // why the connection ended
	windowReady sync.Cond     // signalled when any send window grows or the connection ends
}

// NewServerConn returns the server side of an HTTP/2 connection whose
// client preface has not been read yet.
func NewServerConn(c net.Conn, cfg Config, h Handler) *Conn { return newConn(c, cfg, h, true) }

// NewClientConn returns the client side of an HTTP/2 connection (the
// preface is sent by Run).
func NewClientConn(c net.Conn, cfg Config, h Handler) *Conn { return newConn(c, cfg, h, false) }

func newConn(c net.Conn, cfg Config, h Handler, server bool) *Conn {
	cfg = cfg.withDefaults()
	cn := &Conn{conn: c, cfg: cfg, server: server, handler: h, streams: map[uint32]*Stream{},
		nextID: 1, peerMax: 100, peerWindow: 65535, sendWindow: 65535, recvWindow: int64(cfg.ConnWindow),
		settled: make(chan struct{})}
	cn.windowReady.L = &cn.mu
	cn.br = bufio.NewReaderSize(c, 16<<10)
	cn.drainer, _ = h.(Drainer)
	cn.rd = http2.NewFramer(nil, cn.br)
	cn.rd.SetReuseFrames()
	cn.rd.SetMaxReadFrameSize(maxFrame) // SETTINGS_MAX_FRAME_SIZE is left at its default
	// Decoding stops (the block is Truncated) at four times what is
	// advertised: past the advertised size a request gets 431, past this
	// the connection ends (an HPACK bomb).
	cn.rd.MaxHeaderListSize = 4 * cfg.MaxHeaderListSize
	cn.rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	cn.w = NewWriter(c, 0)
	cn.w.idle = cfg.WriteIdleTimeout
	if cfg.IdleTimeout > 0 {
		cn.idle = time.AfterFunc(cfg.IdleTimeout, cn.idleExpired)
	}
	if !server {
		// Queued now, so that they precede the first stream however soon
		// it is opened; they go out with it, or when Run starts.
		cn.queueSettings(&Frames{w: cn.w})
	}
	return cn
}

// Run starts the connection and reads it until it ends, delivering
// stream events to the handler; it closes the socket and returns why the
// connection ended (io.EOF: the peer closed it).
func (c *Conn) Run() error {
	err := c.start()
	if err == nil {
		err = c.readLoop()
	}
	return c.shutdown(err)
}

// start exchanges the preface and SETTINGS.
func (c *Conn) start() error {
	if !c.server {
		return c.w.Queue(func(*Frames) {}) // sends what newConn queued
	}
	c.conn.SetReadDeadline(time.Now().Add(c.cfg.PrefaceTimeout))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.conn, preface); err != nil {
		return err
	}
	if string(preface) != http2.ClientPreface {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if err := c.w.Queue(c.queueSettings); err != nil {
		return err
	}
	// The client's preface goes on with SETTINGS.
	fr, err := c.rd.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := fr.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.conn.SetReadDeadline(time.Time{})
	return c.settings(sf)
}

// queueSettings queues this side's SETTINGS and connection window, after
// the preface on the client side.
func (c *Conn) queueSettings(f *Frames) {
	settings := []http2.Setting{
		{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxConcurrentStreams},
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.StreamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
	}
	if !c.server {
		f.Raw([]byte(http2.ClientPreface))
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	_ = f.Framer().WriteSettings(settings...)
	if extra := c.cfg.ConnWindow - 65535; extra > 0 {
		_ = f.Framer().WriteWindowUpdate(0, extra)
	}
}

func (c *Conn) readLoop() error {
	for {
		if c.drainer != nil && c.br.Buffered() == 0 {
			c.drainer.Drained() // before waiting for more
		}
		fh, err := c.rd.ReadFrameHeader()
		var f http2.Frame
		if err == nil {
			f, err = c.rd.ReadFrameForHeader(fh)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if fh.Type == http2.FrameHeaders {
					if err := c.spendMalformed(); err != nil {
						return err
					}
				}
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return http2.ConnectionError(http2.ErrCodeFrameSize)
			}
			return err
		}
		if err := c.spend(f); err != nil {
			return err
		}
		if err := c.frame(f); err != nil {
			return err
		}
	}
}

// spending is what the peer sent in the current second.
type spending struct {
	since                             time.Time
	resets, settings, pings, requests int
	headerBytes                       int
}

// spentNow returns what the peer sent in the current second, starting a
// new second when the last is over.
func (c *Conn) spentNow() *spending {
	now := time.Now
	if c.cfg.Budgets.Clock != nil {
		now = c.cfg.Budgets.Clock
	}
	if now := now(); now.Sub(c.spent.since) > time.Second {
		c.spent = spending{since: now}
	}
	return &c.spent
}

// spend counts f against the budgets and ends the connection when one is
// exceeded.
func (c *Conn) spend(f http2.Frame) error {
	b, s := &c.cfg.Budgets, c.spentNow()
	var over string
	switch f := f.(type) {
	case *http2.RSTStreamFrame:
		if s.resets++; b.Resets > 0 && s.resets > b.Resets {
			over = "RST_STREAM frames"
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			break
		}
		if s.settings++; b.Settings > 0 && s.settings > b.Settings {
			over = "SETTINGS frames"
		}
	case *http2.PingFrame:
		if f.IsAck() || c.sentDataSincePing() {
			break
		}
		if s.pings++; b.Pings > 0 && s.pings > b.Pings+2*s.requests {
			over = "PING frames"
		}
	case *http2.MetaHeadersFrame:
		s.requests++
		s.headerBytes += int(listSize(f))
		switch {
		case f.Truncated:
			over = "a header section decoding to over " + strconv.Itoa(int(c.rd.MaxHeaderListSize>>10)) + " KiB (an HPACK bomb)"
		case b.HeaderBytes > 0 && s.headerBytes > b.HeaderBytes:
			over = "header bytes"
		}
	}
	return c.flood(over)
}

// sentDataSincePing reports whether at least freePingData bytes of DATA
// went to the peer since its last PING.
func (c *Conn) sentDataSincePing() bool {
	c.mu.Lock()
	sent := c.dataSent
	c.mu.Unlock()
	fresh := sent-c.pinged >= freePingData
	c.pinged = sent
	return fresh
}

// freePingData is the DATA a PING must follow to be free: a peer that
// shrinks its window to make this side send tiny frames does not get a
// free PING for each.
const freePingData = 1 << 10

// spendMalformed charges a malformed header section (the Framer refused
// it after decoding it) what the largest one costs to decode: an honest
// client sends none, and a bomb of malformed blocks is caught as one of
// well-formed blocks would be.
func (c *Conn) spendMalformed() error {
	b, s := &c.cfg.Budgets, c.spentNow()
	if s.headerBytes += int(c.rd.MaxHeaderListSize); b.HeaderBytes > 0 && s.headerBytes > b.HeaderBytes {
		return c.flood("malformed header sections")
	}
	return nil
}

// flood reports what the peer flooded, if anything, and returns the
// connection error that ends the connection for it.
func (c *Conn) flood(over string) error {
	if over == "" {
		return nil
	}
	c.cfg.OnFlood(over)
	return fmt.Errorf("%w: the peer sent too many %s", http2.ConnectionError(http2.ErrCodeEnhanceYourCalm), over)
}

// frame handles one frame; a returned error ends the connection.
func (c *Conn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.settings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return c.w.Queue(func(q *Frames) { _ = q.Framer().WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return c.windowUpdate(f)
	case *http2.MetaHeadersFrame:
		return c.headers(f)
	case *http2.DataFrame:
		return c.data(f)
	case *http2.RSTStreamFrame:
		return c.rstStream(f)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
		return nil
	case *http2.GoAwayFrame:
		return c.goAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // never enabled
	}
	return nil // unknown frame types are ignored
}

// settings applies and acknowledges the peer's SETTINGS. The ACK is
// queued under both locks (the writer's first, as NewStream takes them),
// so every frame sent under the new settings follows it: the peer reads
// the ACK before the DATA a larger window allows, as from x/net's server
// (h2spec 6.9.2 expects that order).
func (c *Conn) settings(f *http2.SettingsFrame) error {
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return err
	}
	if err := c.w.lockRoom(); err != nil {
		return err
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peerMax = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peerWindow)
			for _, st := range c.streams {
				if st.sendWindow += delta; st.sendWindow > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.peerWindow = int32(s.Val)
			c.windowReady.Broadcast()
		case http2.SettingHeaderTableSize:
			c.w.enc.SetMaxDynamicTableSize(min(s.Val, 4096))
		}
		return nil
	})
	if err == nil {
		select {
		case <-c.settled:
		default:
			close(c.settled)
		}
		_ = c.w.fr.WriteSettingsAck()
	}
	c.mu.Unlock()
	if err != nil {
		c.w.mu.Unlock()
		return err
	}
	return c.w.sendLocked()
}

func (c *Conn) windowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if c.sendWindow += int64(f.Increment); c.sendWindow > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.windowReady.Broadcast()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a closed stream's: ignored
	}
	if st.sendWindow += int64(f.Increment); st.sendWindow > 1<<31-1 {
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
		c.mu.Lock()
		return nil
	}
	c.windowReady.Broadcast()
	return nil
}

// idleLocked reports whether id names a stream never opened.
func (c *Conn) idleLocked(id uint32) bool {
	if c.server == (id%2 == 1) {
		return id > c.lastPeerID
	}
	return id >= c.nextID
}

func (c *Conn) rstStream(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	if c.idleLocked(f.StreamID) {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st := c.streams[f.StreamID]
	if st != nil {
		c.removeLocked(st)
	}
	c.mu.Unlock()
	if st != nil {
		c.handler.Closed(st, http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
	}
	return nil
}

// goAway handles the peer's GOAWAY: no new streams; as a client, the
// streams it did not take end now (retryable). The peer closes the
// connection when it is done; until then it is served.
func (c *Conn) goAway(f *http2.GoAwayFrame) error {
	c.mu.Lock()
	c.peerAway = true
	var refused []*Stream
	if !c.server {
		for id, st := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, st)
				c.removeLocked(st)
			}
		}
	}
	c.mu.Unlock()
	for _, st := range refused {
		c.handler.Closed(st, fmt.Errorf("%w: the peer did not process stream %d (GOAWAY %v)", ErrGoingAway, st.ID, f.ErrCode))
	}
	return nil
}

// resetStream sends RST_STREAM for id and ends the stream, if open.
func (c *Conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	st := c.streams[id]
	if st != nil {
		c.removeLocked(st)
	}
	c.mu.Unlock()
	_ = c.w.Queue(func(f *Frames) { _ = f.Framer().WriteRSTStream(id, code) })
	if st != nil {
		c.handler.Closed(st, http2.StreamError{StreamID: id, Code: code})
	}
}

// removeLocked forgets a stream that ended or was reset.
func (c *Conn) removeLocked(st *Stream) {
	if st.closed {
		return
	}
	st.closed = true
	delete(c.streams, st.ID)
	c.windowReady.Broadcast()
	if c.idle != nil && len(c.streams) == 0 && c.err == nil {
		c.idle.Reset(c.cfg.IdleTimeout)
	}
}

// idleExpired ends the connection if it is still idle.
func (c *Conn) idleExpired() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.err == nil
	c.mu.Unlock()
	if idle {
		c.GoAway()
	}
}

// shutdown ends the connection for err: a connection error is sent as
// GOAWAY first; every open stream is closed with err.
func (c *Conn) shutdown(err error) error {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.mu.Lock()
		last := c.lastPeerID
		c.mu.Unlock()
		// A peer that does not read cannot hold the goodbye up.
		c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.w.Queue(func(f *Frames) { _ = f.Framer().WriteGoAway(last, http2.ErrCode(ce), nil) })
		c.lingerClose()
	}
	c.conn.Close()
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	open := make([]*Stream, 0, len(c.streams))
	for _, st := range c.streams {
		open = append(open, st)
		c.removeLocked(st)
	}
	c.mu.Unlock()
	for _, st := range open {
		c.handler.Closed(st, err)
	}
	return err
}

// lingerClose ends the sending side and reads (a bounded amount, for at
// most a second) what the peer still sends before the connection is
// closed: closing with unread bytes makes the kernel send a reset, which
// can destroy the GOAWAY before the peer reads it.
func (c *Conn) lingerClose() {
	if c.w.CloseWrite() != nil {
		return
	}
	c.conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, c.conn, 256<<10)
}

// GoAway stops the connection taking new streams: it sends GOAWAY naming
// the last stream it serves (server role) and ends once the open streams
// have. Close ends it at once.
func (c *Conn) GoAway() {
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	_ = c.w.Queue(func(f *Frames) { _ = f.Framer().WriteGoAway(last, http2.ErrCodeNo, nil) })
	c.mu.Lock()
	c.goingAway = true
	if len(c.streams) == 0 {
		c.endIdleLocked()
	}
	c.mu.Unlock()
}

// endIdleLocked ends, once, a connection that sent GOAWAY and has no
// stream left: its sending side closes after what is queued, and the
// reader gives the peer a few seconds to close its side.
func (c *Conn) endIdleLocked() {
	if c.ending {
		return
	}
	c.ending = true
	go func() {
		c.lastFrames.Wait()
		if c.w.CloseWrite() != nil {
			c.conn.Close()
			return
		}
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	}()
}

// Close closes the connection; Run returns.
func (c *Conn) Close() error { return c.conn.Close() }

// Open reports whether the connection can take a new stream now.
func (c *Conn) Open() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goingAway && !c.peerAway && uint32(c.activeLocked()) < c.peerMax
}

func (c *Conn) activeLocked() int { return len(c.streams) }

// Settled is closed once the peer's first SETTINGS is applied. Streams
// opened before it count against a guessed limit of 100, and the peer may
// refuse those past its real one (REFUSED_STREAM: not processed, safe to
// retry).
func (c *Conn) Settled() <-chan struct{} { return c.settled }

// Err returns why the connection ended, nil while it runs.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
