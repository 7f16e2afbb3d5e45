// Package tracestore keeps the spans the proxies export over OTLP, so the
// dashboard can show a request's trace with no tracing server in one-host
// mode. The control plane serves Service on its gRPC port (callers must
// present a mesh certificate) and hands the Store to internal/dashboard.
// Memory is bounded: the newest MaxTraces traces, MaxSpans spans each and
// MaxBytes in all, each span cut to MaxAttributes attributes of capped
// length; a proxy's spans must be its own (see Service).
package tracestore

import (
	"cmp"
	"context"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Bounds of a Store.
const (
	MaxTraces = 2000
	MaxSpans  = 256
	// MaxRecent spans are kept in arrival order for Recent.
	MaxRecent = 2000
	// MaxBytes bounds the traces kept, as their strings add up.
	MaxBytes = 64 << 20
	// MaxAttributes are kept per span; names and values are capped at
	// telemetry.MaxValueBytes.
	MaxAttributes = 32
)

// Span is one span as the dashboard draws it.
type Span struct {
	TraceID  string    `json:"traceId"`
	SpanID   string    `json:"spanId"`
	ParentID string    `json:"parentId,omitempty"`
	Name     string    `json:"name"`
	Kind     string    `json:"kind"` // client, server, ...
	Service  string    `json:"service"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	// StartUS and DurationUS: microseconds (since the Unix epoch), for
	// drawing; JavaScript's dates stop at milliseconds.
	StartUS    int64             `json:"startUs"`
	DurationUS int64             `json:"durationUs"`
	Error      bool              `json:"error"`
	Attributes map[string]string `json:"attributes,omitempty"`
}

// Store holds recent traces. Safe for concurrent use.
type Store struct {
	mu     sync.Mutex
	traces map[string][]Span // guarded by mu
	order  []string          // guarded by mu: trace IDs, oldest first
	recent []Span            // guarded by mu: a ring of the newest MaxRecent spans
	next   int               // guarded by mu: where the next span goes in recent once it is full
	bytes  int               // guarded by mu: the size of traces
}

// New returns an empty store.
func New() *Store { return &Store{traces: map[string][]Span{}} }

// Add stores the spans of one OTLP export.
func (s *Store) Add(rs []*tracepb.ResourceSpans) { s.add(rs, nil) }

// add stores the spans of one export that pass keep (nil: all), and
// returns how many did not.
func (s *Store) add(rs []*tracepb.ResourceSpans, keep func(Span) bool) (dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		service := attr(r.GetResource().GetAttributes(), "service.name")
		for _, ss := range r.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				span := convert(sp, service)
				if keep != nil && !keep(span) {
					dropped++
					continue
				}
				s.addLocked(span)
			}
		}
	}
	return dropped
}

func (s *Store) addLocked(sp Span) {
	spans, ok := s.traces[sp.TraceID]
	if !ok {
		s.order = append(s.order, sp.TraceID)
	}
	if len(spans) < MaxSpans {
		s.traces[sp.TraceID] = append(spans, sp)
		s.bytes += sp.size()
	}
	for len(s.order) > 1 && (len(s.order) > MaxTraces || s.bytes > MaxBytes) {
		for _, old := range s.traces[s.order[0]] {
			s.bytes -= old.size()
		}
		delete(s.traces, s.order[0])
		s.order = s.order[1:]
	}
	if len(s.recent) < MaxRecent {
		s.recent = append(s.recent, sp)
		return
	}
	s.recent[s.next] = sp // overwrites the oldest: no copying per span
	s.next = (s.next + 1) % MaxRecent
}

// Recent returns the newest spans received, newest first.
func (s *Store) Recent() []Span {
	s.mu.Lock()
	out := append(slices.Clone(s.recent[s.next:]), s.recent[:s.next]...) // oldest first
	s.mu.Unlock()
	slices.Reverse(out)
	return out
}

// Trace returns the spans of trace id (lowercase hex), earliest first;
// none when it is unknown or evicted.
func (s *Store) Trace(id string) []Span {
	s.mu.Lock()
	out := slices.Clone(s.traces[id])
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Span) int { return cmp.Or(a.Start.Compare(b.Start), b.End.Compare(a.End)) })
	return out
}

// size is about what a span holds in memory.
func (sp Span) size() int {
	n := 200 + len(sp.TraceID) + len(sp.SpanID) + len(sp.ParentID) + len(sp.Name) + len(sp.Kind) + len(sp.Service)
	for k, v := range sp.Attributes {
		n += 50 + len(k) + len(v)
	}
	return n
}

func convert(sp *tracepb.Span, service string) Span {
	out := Span{
		TraceID: hex.EncodeToString(clip(sp.GetTraceId())), SpanID: hex.EncodeToString(clip(sp.GetSpanId())),
		Name: telemetry.CleanValue(sp.GetName()), Kind: kindName(sp.GetKind()), Service: telemetry.CleanValue(service),
		Start: time.Unix(0, int64(sp.GetStartTimeUnixNano())), End: time.Unix(0, int64(sp.GetEndTimeUnixNano())),
		Error: sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
	}
	out.StartUS, out.DurationUS = out.Start.UnixMicro(), out.End.Sub(out.Start).Microseconds()
	if p := sp.GetParentSpanId(); len(p) > 0 {
		out.ParentID = hex.EncodeToString(clip(p))
	}
	if len(sp.GetAttributes()) > 0 {
		out.Attributes = map[string]string{}
		for _, kv := range sp.GetAttributes()[:min(len(sp.GetAttributes()), MaxAttributes)] {
			out.Attributes[telemetry.CleanValue(kv.GetKey())] = telemetry.CleanValue(value(kv.GetValue()))
		}
	}
	return out
}

// clip caps an ID at 16 bytes (a trace ID's length).
func clip(id []byte) []byte { return id[:min(len(id), 16)] }

func kindName(k tracepb.Span_SpanKind) string {
	switch k {
	case tracepb.Span_SPAN_KIND_CLIENT:
		return "client"
	case tracepb.Span_SPAN_KIND_SERVER:
		return "server"
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return "producer"
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return "consumer"
	}
	return "internal"
}

func attr(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return value(kv.GetValue())
		}
	}
	return ""
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	}
	return ""
}

// ownSpan reports whether the proxy principal (of namespace ns) could have
// recorded sp.
func ownSpan(sp Span, principal, ns string) bool {
	switch sp.Attributes["istio.reporter"] {
	case "destination":
		return sp.Attributes["istio.destination_principal"] == principal
	case "source":
		src := sp.Attributes["istio.source_workload"]
		return src == "unknown" || strings.HasPrefix(src, ns+"/")
	}
	return false
}

// Service is the OTLP/gRPC trace receiver. It takes spans only from
// callers that presented a verified certificate (the mesh's proxies), and
// of those only the spans the caller could have recorded: as the
// destination, it must be the span's destination principal; as the
// source, the source workload must be in its namespace. A proxy cannot
// put words in another workload's mouth.
type Service struct {
	collectorpb.UnimplementedTraceServiceServer
	Store *Store
	// OnDropped, when set, is told how many spans of an export were not
	// the caller's own.
	OnDropped func(n int)
}

// Export implements OTLP's TraceService.
func (s *Service) Export(ctx context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	p, ok := peer.FromContext(ctx)
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !ok || !isTLS || len(info.State.VerifiedChains) == 0 {
		return nil, status.Error(codes.Unauthenticated, "spans are accepted from mesh proxies only: present the workload certificate")
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) != 1 {
		return nil, status.Error(codes.Unauthenticated, "the client certificate carries no single SPIFFE ID")
	}
	caller, err := identity.Parse(leaf.URIs[0].String())
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	ns, _, _ := caller.Workload()
	dropped := s.Store.add(req.GetResourceSpans(), func(sp Span) bool { return ownSpan(sp, caller.String(), ns) })
	if dropped > 0 && s.OnDropped != nil {
		s.OnDropped(dropped)
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}
