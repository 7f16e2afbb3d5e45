package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// peerHeader carries the calling workload's metadata from the source
// sidecar to the destination sidecar, as Istio's x-envoy-peer-metadata
// does. It is trusted only on mutual TLS and never reaches an app.
const peerHeader = "X-Trellis-Peer"

// exchange is what RoundTrip learned about a request, for its metrics.
type exchange struct {
	dest                    telemetry.Peer
	service, svcName, svcNS string
	mutualTLS               bool
}

type exchangeKey struct{}

func selfPeer(w *meshpb.Workload) telemetry.Peer {
	return telemetry.PeerFromLabels(w.GetName(), w.GetNamespace(), w.GetIdentity(), w.GetLabels())
}

func endpointPeer(e *meshpb.Endpoint) telemetry.Peer {
	if e.GetWorkload() == "" {
		return telemetry.Unknown
	}
	principal := e.GetIdentity()
	if principal == "" {
		principal = "unknown"
	}
	return telemetry.PeerFromLabels(e.GetWorkload(), e.GetNamespace(), principal, e.GetLabels())
}

// encodePeer writes the source's metadata and the service it called.
func encodePeer(p telemetry.Peer, service, name, namespace string) string {
	return url.Values{
		"workload": {p.Workload}, "namespace": {p.Namespace}, "app": {p.App}, "version": {p.Version},
		"canonical_service": {p.CanonicalService}, "canonical_revision": {p.CanonicalRevision},
		"service": {service}, "service_name": {name}, "service_namespace": {namespace},
	}.Encode()
}

// maxPreamble bounds the peer metadata a TCP tunnel starts with.
const maxPreamble = 4 << 10

// writePreamble starts a TCP tunnel with the caller's metadata (what the
// peer header carries for HTTP): two bytes of length, then the encoding.
func writePreamble(w io.Writer, meta string) error {
	if len(meta) > maxPreamble {
		meta = "" // never happens with real labels; the destination records "unknown"
	}
	_, err := w.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(meta))), meta...))
	return err
}

// readPreamble reads what writePreamble wrote.
func readPreamble(r io.Reader) (string, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	size := int(binary.BigEndian.Uint16(n[:]))
	if size > maxPreamble {
		return "", fmt.Errorf("tunnel preamble of %d bytes exceeds %d", size, maxPreamble)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return string(b), err
}

func decodePeer(s, principal string) (telemetry.Peer, url.Values) {
	v, err := url.ParseQuery(s)
	if err != nil || v.Get("workload") == "" {
		p := telemetry.Unknown
		p.Principal = principal
		return p, url.Values{}
	}
	return telemetry.Peer{
		Workload: v.Get("workload"), Namespace: v.Get("namespace"), Principal: principal,
		App: v.Get("app"), Version: v.Get("version"),
		CanonicalService: v.Get("canonical_service"), CanonicalRevision: v.Get("canonical_revision"),
	}, v
}

// observed wraps a handler's response to learn its status, size and gRPC
// status. Unwrap lets http.ResponseController reach the real writer.
type observed struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (o *observed) WriteHeader(code int) {
	if o.code == 0 {
		o.code = code
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *observed) Write(b []byte) (int, error) {
	if o.code == 0 {
		o.code = http.StatusOK
	}
	n, err := o.ResponseWriter.Write(b)
	o.bytes += int64(n)
	return n, err
}

func (o *observed) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// grpcStatus reads the response's grpc-status, sent as a trailer or, for
// trailers-only responses, as a header.
func (o *observed) grpcStatus() string {
	h := o.Header()
	if s := h.Get("Grpc-Status"); s != "" {
		return s
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

// countedBody counts the request body bytes the proxy forwards.
type countedBody struct {
	io.ReadCloser
	n int64
}

func (c *countedBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n += int64(n)
	return n, err
}

func protocolOf(r *http.Request) string {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return "grpc"
	}
	return "http"
}

// record builds and records one request's metrics.
func record(m *telemetry.Metrics, reporter string, src, dst telemetry.Peer, ex *exchange,
	r *http.Request, w *observed, body *countedBody, start time.Time) {
	if m == nil {
		return
	}
	var reqBytes int64
	if body != nil {
		reqBytes = body.n
	}
	m.ObserveRequest(telemetry.Request{
		Reporter: reporter, Source: src, Dest: dst,
		Service: ex.service, ServiceName: ex.svcName, ServiceNamespace: ex.svcNS,
		Protocol: protocolOf(r), Code: w.code, GRPCStatus: w.grpcStatus(), MutualTLS: ex.mutualTLS,
		Flags: w.Header().Get("X-Trellis-Response-Flags"), Duration: time.Since(start),
		RequestBytes: reqBytes, ResponseBytes: w.bytes,
	})
}

// grpcTrailersOnly turns a gRPC "trailers-only" response (status in the
// headers, no body) into headers plus trailers. Forwarded as is, a flush
// after the headers would split it into headers and an empty end of stream,
// which gRPC clients read as a stream closed without trailers.
func grpcTrailersOnly(resp *http.Response) {
	if resp == nil || resp.Header.Get("Grpc-Status") == "" {
		return
	}
	if resp.Trailer == nil {
		resp.Trailer = http.Header{}
	}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"} {
		if v, ok := resp.Header[k]; ok {
			resp.Trailer[k] = v
			delete(resp.Header, k)
		}
	}
}
