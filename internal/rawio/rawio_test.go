package rawio

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pair returns both ends of a real loopback TCP connection, each wrapped.
func pair(t *testing.T) (client, server *Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.FailNow()
	}
	client, server = Wrap(c).(*Conn), Wrap(s).(*Conn)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Errorf("Wrap(pipe) = %T, want the pipe itself", got)
	}
}

// A large write to a slow reader arrives whole and in order: Write waits
// for room and goes on where the socket took less.
func TestLargeWriteToSlowReader(t *testing.T) {
	client, server := pair(t)
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(mrand.Uint32())
	}
	want := sha256.Sum256(data)
	done := make(chan error, 1)
	go func() {
		n, err := client.Write(data)
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		client.CloseWrite()
		done <- err
	}()
	h := sha256.New()
	buf := make([]byte, 1500)
	for total := 0; ; {
		n, err := server.Read(buf)
		h.Write(buf[:n])
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", total, err)
		}
		if total < 1<<20 {
			time.Sleep(time.Millisecond) // slow at first: the socket buffers fill
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Error("the bytes read differ from the bytes written")
	}
}

// After the peer's CloseWrite a Read returns io.EOF and the other
// direction still works; after its Close, so does this end.
func TestEOFAndHalfClose(t *testing.T) {
	client, server := pair(t)
	if _, err := client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "request" {
		t.Fatalf("server ReadAll = %q, %v, want %q, nil", got, err, "request")
	}
	if _, err := server.Write([]byte("response")); err != nil {
		t.Fatalf("Write after the peer's CloseWrite: %v", err)
	}
	server.Close()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "response" {
		t.Fatalf("client ReadAll = %q, %v, want %q, nil", got, err, "response")
	}
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on a closed Conn: %v, want net.ErrClosed", err)
	}
}

// Deadlines cut reads and writes as net's do, and a cleared deadline lets
// them go on.
func TestDeadlines(t *testing.T) {
	client, server := pair(t)
	server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := server.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v, want a timeout with os.ErrDeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("Read returned %v after its deadline", waited)
	}
	server.SetReadDeadline(time.Time{})
	client.Write([]byte("x"))
	if n, err := server.Read(make([]byte, 10)); n != 1 || err != nil {
		t.Fatalf("Read after the deadline was cleared = %d, %v", n, err)
	}

	// Nobody reads: the socket buffers fill and the write deadline cuts
	// the write, reporting what went out.
	big := make([]byte, 64<<20)
	client.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	n, err := client.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("Write past its deadline = %d, %v, want part of it and os.ErrDeadlineExceeded", n, err)
	}
}

// TryWrite takes what fits and returns at once when the socket is full;
// the bytes it took arrive in order, and a Write sends the rest.
func TestTryWriteNeverWaits(t *testing.T) {
	client, server := pair(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: more than loopback buffers
	start := time.Now()
	n, err := client.TryWrite(data)
	if err != nil || n <= 0 || n >= len(data) {
		t.Fatalf("TryWrite of 16 MiB nobody reads = %d, %v; want part of it and no error", n, err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("TryWrite took %v", waited)
	}
	if m, err := client.TryWrite(data[n:]); err != nil || m > 1<<20 {
		t.Fatalf("TryWrite on a full socket = %d, %v; want (almost) nothing and no error", m, err)
	} else {
		n += m
	}
	go func() {
		client.Write(data[n:])
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; want the %d written, in order", len(got), err, len(data))
	}
}

// ReadPooled holds no buffer while the connection is idle and hands back
// the one it took when the read fails.
func TestReadPooledHoldsNoBufferWhileIdle(t *testing.T) {
	client, server := pair(t)
	var gets, puts atomic.Int32
	get := func() []byte { gets.Add(1); return make([]byte, 4096) }
	put := func([]byte) { puts.Add(1) }
	type result struct {
		buf []byte
		n   int
		err error
	}
	res := make(chan result, 1)
	go func() {
		buf, n, err := server.ReadPooled(get, put)
		res <- result{buf, n, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for puts.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g, p := gets.Load(), puts.Load(); g == 0 || g != p {
		t.Fatalf("while idle: %d buffers taken, %d given back; want every one given back", g, p)
	}
	client.Write([]byte("hello"))
	r := <-res
	if r.err != nil || string(r.buf[:r.n]) != "hello" {
		t.Fatalf("ReadPooled = %q, %v, want %q", r.buf[:r.n], r.err, "hello")
	}
	if g, p := gets.Load(), puts.Load(); g != p+1 {
		t.Errorf("after a read: %d taken, %d given back; want exactly the one returned held", g, p)
	}

	client.Close()
	buf, _, err := server.ReadPooled(get, put)
	if err != io.EOF || buf != nil {
		t.Errorf("ReadPooled at EOF = %v, %v, want nil, io.EOF", buf, err)
	}
	if g, p := gets.Load(), puts.Load(); g != p+1 {
		t.Errorf("after EOF: %d taken, %d given back; the failed read's buffer was kept", g, p)
	}
}

// crypto/tls runs over Conns unchanged, with io.Copy (ReadFrom/WriteTo)
// on top.
func TestTLSOverConn(t *testing.T) {
	client, server := pair(t)
	cert, pool := selfSigned(t, "server")
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cliCfg := &tls.Config{RootCAs: pool, ServerName: "server"}
	ts, tc := tls.Server(server, srvCfg), tls.Client(client, cliCfg)
	data := bytes.Repeat([]byte("trellis "), 1<<17)
	go func() {
		io.Copy(ts, ts) // echo
		ts.CloseWrite()
	}()
	go func() {
		tc.Write(data)
		tc.CloseWrite()
	}()
	got, err := io.ReadAll(tc)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo over TLS: %d bytes, %v; want %d bytes back", len(got), err, len(data))
	}
	var sink bytes.Buffer
	client2, server2 := pair(t)
	go func() { client2.ReadFrom(bytes.NewReader(data)); client2.CloseWrite() }()
	if n, err := server2.WriteTo(&sink); err != nil || n != int64(len(data)) {
		t.Fatalf("WriteTo = %d, %v, want %d", n, err, len(data))
	}
}

// selfSigned is a certificate for name that the returned pool trusts.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// A read and a write allocate nothing: the proxy makes several of each
// per request.
func TestReadWriteDoNotAllocate(t *testing.T) {
	if raceBuild {
		t.Skip("the race detector allocates: run without -race")
	}
	c, s := pair(t)
	msg, buf := []byte("ping"), make([]byte, 16)
	pool := make([]byte, 16)
	get, put := func() []byte { return pool }, func([]byte) {}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TryWrite(msg); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadPooled(get, put); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a Write, Read, TryWrite and ReadPooled allocate %v times, want 0", allocs)
	}
}

// Writes from several goroutines at once, each large enough to fill the
// socket and wait, arrive each whole, none mixed into another: net/http
// writes a request's last bytes while an Upgrade's copier starts on the
// stream after 101.
func TestConcurrentWritesStayWhole(t *testing.T) {
	client, server := pair(t)
	const writers, size = 4, 1 << 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := client.Write(bytes.Repeat([]byte{byte('a' + w)}, size)); err != nil {
				t.Error(err)
			}
		}()
	}
	go func() { wg.Wait(); client.CloseWrite() }()
	got, err := io.ReadAll(readerOnly{server})
	if err != nil || len(got) != writers*size {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, writers*size)
	}
	for i := 0; i < len(got); i += size {
		if run := bytes.Count(got[i:i+size], got[i:i+1]); run != size {
			t.Fatalf("write %d arrived mixed with another: %d of its %d bytes in its place", i/size, run, size)
		}
	}
}
