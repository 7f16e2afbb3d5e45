package proxy

import (
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// gRPC messages are counted however the stream is cut into reads: one byte
// at a time, or everything at once.
func TestGRPCMessageCountingAcrossSplits(t *testing.T) {
	var stream []byte
	for _, size := range []int{0, 1, 5, 70000, 3} {
		stream = append(stream, 0)
		stream = binary.BigEndian.AppendUint32(stream, uint32(size))
		stream = append(stream, make([]byte, size)...)
	}
	for _, chunk := range []int{1, 4, 5, 7, 4096, len(stream)} {
		g := &grpcMessages{}
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			g.feed(b[:k])
			b = b[k:]
		}
		if g.count() != 5 {
			t.Errorf("reads of %d bytes: counted %d messages, want 5", chunk, g.count())
		}
	}
}

// Headers the proxies use among themselves are not believed when they come
// from elsewhere: a plaintext caller's peer metadata is ignored and never
// reaches the app, an app's X-Trellis-Peer is dropped before it leaves, and
// an app cannot set its proxy's response flags. The app learns its caller
// from X-Forwarded-Client-Cert, which only its sidecar sets: from the mTLS
// peer, never from the caller's own header.
func TestMeshHeadersFromOutsideAreNotTrusted(t *testing.T) {
	seen := make(chan [2]string, 4)
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- [2]string{r.Header.Get(peerHeader), r.Header.Get(xfccHeader)}
			w.Header().Set(flagsHeader, "UH")
		})
	})
	dst, src := telemetry.New("test"), telemetry.New("test")
	m.inbounds[0].Metrics, m.outbound.Metrics = dst, src
	forged := encodePeer(telemetry.Peer{Workload: "forged", Namespace: "evil"}, "x", "x", "x")
	inbound := serve(t, func(c net.Conn) { m.inbounds[0].HandleConn(c, m.appPort) })
	forgedXFCC := "By=spiffe://cluster.local/ns/db/sa/default;URI=spiffe://cluster.local/ns/evil/sa/admin"
	for i, addr := range []string{inbound, m.appAddr} { // from outside the mesh; from the app
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "alpha.db"
		req.Header.Set(peerHeader, forged)
		req.Header.Set(xfccHeader, forgedXFCC)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := <-seen
		if got[0] != "" {
			t.Errorf("the app received %s: %q", peerHeader, got[0])
		}
		meshed := i == 1
		if xfcc := got[1]; strings.Contains(xfcc, "evil") || (xfcc != "") != meshed ||
			(meshed && !strings.Contains(xfcc, ";URI=spiffe://")) {
			t.Errorf("request %d (over mTLS: %v): the app received %s %q; want the sidecar's own (By=...;URI=<caller>) over mTLS, none otherwise",
				i, meshed, xfccHeader, xfcc)
		}
	}
	if n := scrapeWait(t, dst, "istio_requests_total", []string{`source_workload="forged"`}, 0); n != 0 {
		t.Errorf("%v requests recorded from the forged workload, want 0", n)
	}
	if n := scrapeWait(t, dst, "istio_requests_total", []string{`source_workload="unknown"`, `connection_security_policy="none"`}, 1); n != 1 {
		t.Errorf("the plaintext request was recorded %v times from an unknown source, want 1", n)
	}
	if n := scrapeWait(t, src, "istio_requests_total", []string{`response_code="200"`, `response_flags="-"`}, 1); n != 1 {
		t.Errorf("requests with code 200 and no flags = %v, want 1 (the app's %s is not the proxy's)", n, flagsHeader)
	}
}

// A client that gives up before the app answers is recorded as Envoy does
// (response code 0, flag DC) by both sidecars, not as the proxy's 503: a
// cancelled call must not make the destination look failing.
func TestCancelledRequestsAreNotUpstreamFailures(t *testing.T) {
	arrived := make(chan struct{}, 1)
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-r.Context().Done() // answer only once the caller is gone
		})
	})
	src, dst := telemetry.New("test"), telemetry.New("test")
	m.outbound.Metrics, m.inbounds[0].Metrics = src, dst
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.appAddr+"/", nil)
	req.Host = "alpha.db"
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	<-errc
	for name, mt := range map[string]*telemetry.Metrics{"source": src, "destination": dst} {
		if got := scrapeWait(t, mt, "istio_requests_total", []string{`response_code="0"`, `response_flags="DC"`}, 1); got != 1 {
			t.Errorf("%s reporter: istio_requests_total{code 0, DC} = %v, want 1", name, got)
		}
		if got := scrape(t, mt, "istio_requests_total", []string{`response_code="503"`}); got != 0 {
			t.Errorf("%s reporter: the cancelled request was counted as a 503 (%v)", name, got)
		}
	}
}

// A plaintext caller sends no metadata; its service is read from the host
// it asked for, in Kubernetes' own form only.
func TestServiceOfHost(t *testing.T) {
	for host, want := range map[string][2]string{
		"alpha.db.svc.cluster.local": {"alpha", "db"},
		"alpha.db.svc":               {"alpha", "db"},
		"alpha.db":                   {"unknown", "unknown"}, // could be a domain
		"example.com":                {"unknown", "unknown"},
		"10.0.0.1":                   {"unknown", "unknown"},
		".db.svc.cluster.local":      {"unknown", "unknown"},
		"":                           {"unknown", "unknown"},
	} {
		if n, ns := serviceOfHost(host); n != want[0] || ns != want[1] {
			t.Errorf("serviceOfHost(%q) = %s, %s; want %s, %s", host, n, ns, want[0], want[1])
		}
	}
}
