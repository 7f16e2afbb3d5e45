package h2

import (
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
)

// inlineHandler answers every request on the reader goroutine, as the
// engine's handlers will: a small response fits the window, so nothing
// waits.
type inlineHandler struct{}

var helloBody = []byte("hello h2")

func (inlineHandler) Headers(s *Stream, _ *http2.MetaHeadersFrame, end bool) {
	if end {
		s.WriteHeaders(false, Field{":status", "200"}, Field{"content-length", "8"})
		s.WriteData(helloBody, true)
	}
}
func (inlineHandler) Data(*Stream, []byte, bool) {}
func (inlineHandler) Closed(*Stream, error)      {}

// doneHandler signals each stream's end on the channel in its Value.
type doneHandler struct{}

func (doneHandler) Headers(s *Stream, _ *http2.MetaHeadersFrame, end bool) {
	if end {
		s.Value.(chan struct{}) <- struct{}{}
	}
}
func (doneHandler) Data(s *Stream, p []byte, end bool) {
	s.Consumed(len(p))
	if end {
		s.Value.(chan struct{}) <- struct{}{}
	}
}
func (doneHandler) Closed(s *Stream, _ error) { s.Value.(chan struct{}) <- struct{}{} }

// BenchmarkRoundTrip is one request and its response through a client and
// a server Conn over loopback TCP: the engine's cost per request on both
// ends, HPACK included (go test -bench RoundTrip -benchmem
// ./internal/proxy/h2).
func BenchmarkRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		NewServerConn(c, Config{}, inlineHandler{}).Run()
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	conn := NewClientConn(c, Config{}, doneHandler{})
	wg.Go(func() { conn.Run() })
	defer conn.Close()
	<-conn.Settled()
	fields := []Field{{":method", "GET"}, {":scheme", "http"}, {":authority", "graphdb.demo.svc:8080"}, {":path", "/query"},
		{"user-agent", "fortio.org/fortio-1.66.2"}, {"x-request-id", "6f1c2b8e-1d3a-4d8e-9a1b-2c3d4e5f6a7b"}}
	b.Run("sequential", func(b *testing.B) {
		done := make(chan struct{}, 1)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := conn.NewStream(done, false, true, fields...); err != nil {
				b.Fatal(err)
			}
			<-done
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			done := make(chan struct{}, 1)
			for pb.Next() {
				if _, err := conn.NewStream(done, false, true, fields...); err != nil {
					b.Error(err)
					return
				}
				<-done
			}
		})
	})
}
