package proxy

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// peerHeader carries the calling workload's metadata from the source
// sidecar to the destination sidecar, as Istio's x-envoy-peer-metadata
// does. It is trusted only on mutual TLS and never reaches an app.
const peerHeader = "X-Trellis-Peer"

// peerHeaderField is peerHeader as an HTTP/2 field name.
const peerHeaderField = "x-trellis-peer"

// exchange is what RoundTrip learned about a request, for its metrics.
type exchange struct {
	dest                    telemetry.Peer
	service, svcName, svcNS string
	mutualTLS               bool
	upstream                string // the endpoint (source) or app port (destination) it went to
	flags, reason           string // set when this proxy failed it
	authz                   authz.Decision
	span                    trace.Span
	// recordedLater: the request was handed on to a forwarder, which
	// records it when it ends.
	recordedLater bool
}

// recorder is where a finished request is recorded; nil fields record
// nothing.
type recorder struct {
	metrics *telemetry.Metrics
	log     *slog.Logger
	tracing *telemetry.Tracing
}

// flagsHeader tells the client which proxy failure answered its request.
// Informative only: a response header can come from anywhere, so metrics
// and logs take the flags from the exchange, never from it.
const flagsHeader = "X-Trellis-Response-Flags"

// failWith answers a request the proxy could not forward, or refused, with
// code, the response flag and a readable reason, and records both in ex for
// the metrics and the access log.
func failWith(w http.ResponseWriter, ex *exchange, code int, flag, reason string) {
	ex.flags, ex.reason = flag, reason
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if flag != "" {
		w.Header().Set(flagsHeader, flag)
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "trellis proxy: %s\n", reason)
}

// failGRPC answers a gRPC call the proxy could not forward, or refused,
// with a trailers-only response whose grpc-status says why: a gRPC client
// reads any HTTP error status as UNAVAILABLE or UNKNOWN, a timeout too.
func failGRPC(w http.ResponseWriter, ex *exchange, status int, flag, reason string) {
	ex.flags, ex.reason = flag, reason
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(status))
	h.Set("Grpc-Message", grpcMessage("trellis proxy: "+reason))
	if flag != "" {
		h.Set(flagsHeader, flag)
	}
	w.WriteHeader(http.StatusOK)
}

// grpcStatusOf is the gRPC status for the proxy's own HTTP answer code.
func grpcStatusOf(code int) int {
	switch code {
	case http.StatusGatewayTimeout:
		return 4 // DEADLINE_EXCEEDED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusBadRequest:
		return 13 // INTERNAL
	}
	return grpcUnavailable
}

// grpcUnavailable is gRPC's UNAVAILABLE, the status of a call no endpoint
// took or answered.
const grpcUnavailable = 14

// endpointCode is what an endpoint's answer to a request, code with
// grpc-status grpcStatus ("" for none), counts as for the endpoint's
// health (outlier detection) and for the statuses a route retries: code,
// but 503 when the request is a gRPC call (grpc) that failed UNAVAILABLE.
// A sidecar whose app is down answers a call so; any other gRPC status is
// the app's answer, as a 4xx is, and a grpc-status on a request that is
// not gRPC is only a header.
func endpointCode(grpc bool, code int, grpcStatus string) int {
	if grpc && code == http.StatusOK && grpcStatus == strconv.Itoa(grpcUnavailable) {
		return http.StatusServiceUnavailable
	}
	return code
}

// answerCode is endpointCode of resp, the answer to r on net/http's path,
// whose grpc-status is known only when it came trailers-only.
func answerCode(r *http.Request, resp *http.Response) int {
	return endpointCode(protocolOf(r) == "grpc" && resp.ContentLength == 0, resp.StatusCode, resp.Header.Get("Grpc-Status"))
}

// grpcMessage percent-encodes s for grpc-message, as the gRPC HTTP/2
// protocol says: bytes outside printable ASCII, and '%'.
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// clientGone records a request whose client went away before the answer
// came (it cancelled, or closed the connection) as Envoy does: nothing
// written, response code 0, flag DC. Counted as the proxy's 503, every
// cancelled call made the destination look failing. It reports whether the
// client was gone.
func clientGone(r *http.Request, err error) bool {
	if r.Context().Err() == nil {
		return false
	}
	ex := exchangeOf(r)
	ex.flags, ex.reason = "DC", "the client went away: "+err.Error()
	return true
}

// cancelledEarly records a request whose client cancelled it before the
// proxy forwarded it, and reports whether it did: an HTTP/2 stream reset
// as soon as it was opened (all of a Rapid Reset flood) is not forwarded.
func cancelledEarly(r *http.Request, ex *exchange) bool {
	err := r.Context().Err()
	if err == nil {
		return false
	}
	ex.flags, ex.reason = "DC", "the client went away before the request was forwarded: "+err.Error()
	return true
}

type exchangeKey struct{}

// exchangeOf returns the exchange ServeHTTP put in r's context.
func exchangeOf(r *http.Request) *exchange {
	if ex, ok := r.Context().Value(exchangeKey{}).(*exchange); ok {
		return ex
	}
	return &exchange{}
}

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

// decodePeer reads the caller's metadata (the peer header or tunnel
// preamble) for the mTLS peer id. Every value is cleaned (valid UTF-8,
// length-capped: they become metric labels, span attributes and log
// fields), and a claim the certificate contradicts is not believed: when
// the claimed namespace is not the certificate's, the labels fall back to
// what the certificate proves and the mismatch is counted.
func decodePeer(s string, id identity.ID) (telemetry.Peer, url.Values) {
	certNS, _, _ := id.Workload()
	proven := telemetry.Unknown
	proven.Principal, proven.Namespace = id.String(), cmp.Or(certNS, "unknown")
	if len(s) > maxPreamble {
		return proven, url.Values{}
	}
	v, err := url.ParseQuery(s)
	if err != nil || v.Get("workload") == "" {
		return proven, url.Values{}
	}
	for k, vals := range v {
		if len(vals) != 1 || !slices.Contains(peerKeys, k) {
			delete(v, k)
			continue
		}
		vals[0] = telemetry.CleanValue(vals[0])
	}
	if v.Get("namespace") != certNS {
		peerMismatches.Add(1)
		peerMismatchOnce.Do(func() {
			slog.Warn("a peer's metadata contradicts its certificate; its labels are what the certificate proves",
				"principal", id.String(), "claimedNamespace", v.Get("namespace"))
		})
		return proven, url.Values{}
	}
	return telemetry.Peer{
		Workload: v.Get("workload"), Namespace: certNS, Principal: id.String(),
		App: v.Get("app"), Version: v.Get("version"),
		CanonicalService: v.Get("canonical_service"), CanonicalRevision: v.Get("canonical_revision"),
	}, v
}

// peerKeys are the metadata keys a peer may send.
var peerKeys = []string{"workload", "namespace", "app", "version", "canonical_service", "canonical_revision",
	"service", "service_name", "service_namespace"}

// Peers whose metadata contradicted their certificate, since start (the
// trellis_proxy_peer_metadata_mismatches_total counter reads it).
var (
	peerMismatches   atomic.Int64
	peerMismatchOnce sync.Once
)

// observed wraps a handler's response to learn its status, size and gRPC
// status. Unwrap lets http.ResponseController reach the real writer.
type observed struct {
	http.ResponseWriter
	code  int
	bytes int64
	msgs  *grpcMessages // nil unless gRPC

	// A write must make progress within writeIdle: a client that stops
	// reading a response is cut off instead of holding it forever.
	rc        *http.ResponseController
	writeIdle time.Duration
	deadline  time.Time
	stream    bool  // HTTP/2: the deadline is the stream's, not the connection's
	writeErr  error // the client could not be written to
}

// extendDeadline gives writes writeIdle from now. It touches the
// connection only once a quarter of the window has passed, not on every
// write of a streamed body: a stalled client is then cut off after 3/4 to
// all of writeIdle.
//
// An HTTP/2 stream gets a deadline only past streamWindow bytes: before
// that its writes cannot block (they fit the peer's flow-control window),
// and each stream deadline costs the connection a timer and a message to
// its serving loop.
func (o *observed) extendDeadline() {
	if o.rc == nil || o.stream && o.bytes < streamWindow {
		return
	}
	now := time.Now()
	if o.deadline.Sub(now) > o.writeIdle*3/4 {
		return
	}
	o.deadline = now.Add(o.writeIdle)
	_ = o.rc.SetWriteDeadline(o.deadline)
}

// streamWindow is HTTP/2's initial flow-control window; peers may grant
// more, never less.
const streamWindow = 64 << 10

// endStream clears an HTTP/2 stream's deadline when the handler is done.
// net/http stops a stream's timer when the stream closes, but a deadline
// set just after a close (a cancelled request still writing its error)
// would keep its timer, and the stream with it, for the whole window: a
// Rapid Reset flood held tens of MiB that way.
func (o *observed) endStream() {
	if o.stream && !o.deadline.IsZero() {
		_ = o.rc.SetWriteDeadline(time.Time{})
	}
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
	o.extendDeadline()
	n, err := o.ResponseWriter.Write(b)
	o.bytes += int64(n)
	if err != nil && o.writeErr == nil {
		o.writeErr = err
	}
	o.msgs.feed(b[:n])
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

// countedBody counts the request body bytes the proxy forwards. The
// transport may still be reading it when the handler records the request
// (a response can end before its request body), hence the atomics.
type countedBody struct {
	io.ReadCloser
	n    atomic.Int64
	msgs *grpcMessages // nil unless gRPC
}

func (c *countedBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	c.msgs.feed(b[:n])
	return n, err
}

// grpcMessages counts gRPC's length-prefixed messages (a flag byte, four
// bytes of length, the message) in a body as it streams past. Only the
// prefixes are looked at; messages are not buffered.
type grpcMessages struct {
	n      atomic.Int64
	prefix [5]byte
	got    int    // bytes of the current prefix seen
	left   uint64 // bytes of the current message still to come
}

func (g *grpcMessages) feed(b []byte) {
	if g == nil {
		return
	}
	for len(b) > 0 {
		if g.left > 0 {
			k := min(uint64(len(b)), g.left)
			g.left -= k
			b = b[k:]
			continue
		}
		k := copy(g.prefix[g.got:], b)
		g.got += k
		b = b[k:]
		if g.got == len(g.prefix) {
			g.n.Add(1)
			g.got, g.left = 0, uint64(binary.BigEndian.Uint32(g.prefix[1:]))
		}
	}
}

func (g *grpcMessages) count() int64 {
	if g == nil {
		return 0
	}
	return g.n.Load()
}

// observe wraps a request's body and response writer to measure them; the
// request's Content-Type says whether to count gRPC messages.
func observe(w http.ResponseWriter, r *http.Request, writeIdle time.Duration) (*observed, *countedBody) {
	ow := &observed{ResponseWriter: w, stream: r.ProtoMajor == 2}
	if writeIdle > 0 {
		ow.rc, ow.writeIdle = http.NewResponseController(w), writeIdle
		ow.extendDeadline() // HTTP/1.1: also covers what net/http flushes after the handler returns
	}
	grpc := protocolOf(r) == "grpc"
	if grpc {
		ow.msgs = &grpcMessages{}
	}
	body := &countedBody{}
	if r.Body != nil && r.Body != http.NoBody {
		body.ReadCloser = r.Body
		if grpc {
			body.msgs = &grpcMessages{}
		}
		r.Body = body
	}
	return ow, body
}

func protocolOf(r *http.Request) string {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return "grpc"
	}
	return "http"
}

// responseFlags are Envoy's response flags for a request: this proxy's own
// failure, or, when the response was cut off midway, DC if the client went
// away and UC if the upstream did.
func responseFlags(r *http.Request, ex *exchange, w *observed, aborted bool) string {
	if ex.flags != "" {
		return ex.flags
	}
	if !aborted {
		return ""
	}
	if r.Context().Err() != nil || w.writeErr != nil {
		return "DC"
	}
	return "UC"
}

// recordAfter, deferred by a handler, records its request when it ends,
// also when the response was cut off midway: ReverseProxy then ends the
// handler with a panic (http.ErrAbortHandler), which recordAfter passes on.
// dst is read when the handler ends (the source learns it while routing).
func recordAfter(rec recorder, reporter string, src telemetry.Peer, dst *telemetry.Peer, ex *exchange,
	r *http.Request, w *observed, body *countedBody, start time.Time) {
	p := recover()
	if p != nil {
		defer panic(p)
	}
	if ex.recordedLater {
		return
	}
	w.endStream()
	req := telemetry.Request{
		Reporter: reporter, Source: src, Dest: *dst,
		Service: ex.service, ServiceName: ex.svcName, ServiceNamespace: ex.svcNS,
		Protocol: protocolOf(r), Code: w.code, GRPCStatus: w.grpcStatus(), MutualTLS: ex.mutualTLS,
		Flags: responseFlags(r, ex, w, p != nil), Duration: time.Since(start),
		RequestBytes: body.n.Load(), ResponseBytes: w.bytes,
		RequestMessages: body.msgs.count(), ResponseMessages: w.msgs.count(),
		Method: r.Method, Path: r.URL.Path,
	}
	rec.record(requestLine{r.Method, r.Host, r.URL.Path, r.Proto}, ex, req)
}

// record ends ex's span (its trace ID goes into req) and records req in the
// metrics and the access log.
func (rec recorder) record(line requestLine, ex *exchange, req telemetry.Request) {
	if ex.span != nil {
		req.TraceID = rec.tracing.End(ex.span, req)
	}
	if rec.metrics != nil {
		rec.metrics.ObserveRequest(req)
	}
	if rec.log != nil {
		accessLog(rec.log, line, ex, req)
	}
}

// requestLine is what the access log names a request by.
type requestLine struct{ method, authority, path, proto string }

// accessLog writes one request's access-log entry: Envoy's usual fields,
// and for a request the proxy failed, the flags and the reason.
func accessLog(log *slog.Logger, r requestLine, ex *exchange, req telemetry.Request) {
	attrs := []slog.Attr{
		slog.String("reporter", req.Reporter),
		slog.String("method", r.method), slog.String("authority", r.authority), slog.String("path", r.path),
		slog.String("protocol", r.proto), slog.Int("code", req.Code),
		slog.String("flags", cmp.Or(req.Flags, "-")),
		slog.Float64("duration_ms", float64(req.Duration.Microseconds())/1000),
		slog.Int64("bytes_received", req.RequestBytes), slog.Int64("bytes_sent", req.ResponseBytes),
		slog.String("source", req.Source.Namespace+"/"+req.Source.Workload),
		slog.String("destination", req.Dest.Namespace+"/"+req.Dest.Workload),
		slog.String("service", req.Service), slog.String("upstream", ex.upstream),
		slog.Bool("mtls", req.MutualTLS),
	}
	if req.GRPCStatus != "" {
		attrs = append(attrs, slog.String("grpc_status", req.GRPCStatus))
	}
	if ex.reason != "" {
		attrs = append(attrs, slog.String("reason", ex.reason))
	}
	attrs = append(attrs, authzAttrs(ex.authz)...)
	if req.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", req.TraceID))
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// authzAttrs name the AuthorizationPolicies behind a decision: the one
// that decided (or "-" when ALLOW policies applied and none matched), the
// AUDIT ones that matched, and the outcome with dry-run policies enforced.
func authzAttrs(d authz.Decision) []slog.Attr {
	var attrs []slog.Attr
	if d.Action != "" {
		attrs = append(attrs, slog.String("authz_policy", cmp.Or(d.Policy, "-")),
			slog.String("authz_result", strings.ToLower(string(d.Action))+" "+result(d.Allowed, "")))
		if d.Policy != "" {
			attrs = append(attrs, slog.Int("authz_rule", d.Rule))
		}
	}
	if len(d.Audited) > 0 {
		attrs = append(attrs, slog.String("authz_audited", strings.Join(d.Audited, ",")))
	}
	if s := d.DryRun; s != nil && s.Action != "" {
		attrs = append(attrs, slog.String("authz_dry_run", result(s.Allowed, "")+" by "+cmp.Or(s.Policy, "-")))
	}
	return attrs
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
