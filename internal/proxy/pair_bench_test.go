package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// BenchmarkPairHTTP1 is the request path of the benchmark's pair, in one
// process over loopback and real mutual TLS: kept-alive HTTP/1.1 client
// connections (parallel, as at saturation) to the outbound proxy, HTTP/2 between the sidecars, a pooled
// HTTP/1.1 connection to the app, with metrics on both sides. The client
// and the app are raw sockets that allocate nothing per request, so
// allocs/op is the pair's own (run with -benchmem; profile with
// -cpuprofile or -memprofile), and so is most of cpu-µs/op.
func BenchmarkPairHTTP1(b *testing.B) {
	m := newTestMeshApp(b, 1, func(string) http.Handler { return http.NotFoundHandler() })
	m.outbound.Metrics, m.inbounds[0].Metrics = telemetry.New("bench"), telemetry.New("bench")
	m.inbounds[0].SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha", Identity: m.serverID.String()}})
	rawApp := serve(b, answerEach)
	_, port, _ := net.SplitHostPort(rawApp)
	p, _ := strconv.Atoi(port)
	in := m.inbounds[0]
	addr := serve(b, func(c net.Conn) { in.HandleConn(c, uint16(p)) })
	host, eport, _ := net.SplitHostPort(addr)
	ep, _ := strconv.Atoi(eport)
	m.outbound.Update(&meshpb.ProxyConfig{Version: "b", Workload: &meshpb.Workload{Namespace: "web", Name: "frontend",
		Identity: "spiffe://cluster.local/ns/web/sa/default", Labels: map[string]string{"app": "frontend"}},
		Services: []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(),
			Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_HTTP,
				Endpoints: []*meshpb.Endpoint{{Address: host, Port: uint32(ep), Identity: m.serverID.String(),
					Workload: "alpha", Namespace: "db", Labels: map[string]string{"app": "alpha"}}}}}}}})

	req := []byte("GET / HTTP/1.1\r\nHost: alpha.db\r\nUser-Agent: bench\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(16) // 32 client connections on 2 cores, as at saturation
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		r := bufio.NewReaderSize(c, 4096)
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if err := readResponse(r); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the CPU time this process has used, user and system: the
// pair's, with the raw client and app's small share.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// answerEach answers every request on c with a fixed 200 of 2 bytes; it
// takes requests without bodies only.
func answerEach(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 4096)
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
	for {
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) <= 2 {
				break
			}
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// readResponse reads one response with a Content-Length body from r.
func readResponse(r *bufio.Reader) error {
	n := -1
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		const cl = "content-length:"
		if len(line) > len(cl) && bytes.EqualFold(line[:len(cl)], []byte(cl)) {
			n = 0
			for _, d := range bytes.TrimSpace(line[len(cl):]) {
				n = n*10 + int(d-'0')
			}
		}
	}
	if n < 0 {
		return io.ErrUnexpectedEOF
	}
	_, err := r.Discard(n)
	return err
}
