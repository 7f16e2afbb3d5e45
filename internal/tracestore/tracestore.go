// Package tracestore keeps the spans the proxies export over OTLP, so the
// dashboard can show a request's trace with no tracing server in one-host
// mode. The control plane serves Service on its gRPC port (callers must
// present a mesh certificate) and hands the Store to internal/dashboard.
// Memory is bounded: the newest MaxTraces traces, MaxSpans spans each.
package tracestore

import (
	"cmp"
	"context"
	"encoding/hex"
	"slices"
	"strconv"
	"sync"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Bounds of a Store.
const (
	MaxTraces = 2000
	MaxSpans  = 256
	// MaxRecent spans are kept in arrival order for Recent.
	MaxRecent = 2000
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
}

// New returns an empty store.
func New() *Store { return &Store{traces: map[string][]Span{}} }

// Add stores the spans of one OTLP export.
func (s *Store) Add(rs []*tracepb.ResourceSpans) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		service := attr(r.GetResource().GetAttributes(), "service.name")
		for _, ss := range r.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				s.addLocked(convert(sp, service))
			}
		}
	}
}

func (s *Store) addLocked(sp Span) {
	spans, ok := s.traces[sp.TraceID]
	if !ok {
		s.order = append(s.order, sp.TraceID)
		if len(s.order) > MaxTraces {
			delete(s.traces, s.order[0])
			s.order = s.order[1:]
		}
	}
	if len(spans) < MaxSpans {
		s.traces[sp.TraceID] = append(spans, sp)
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

func convert(sp *tracepb.Span, service string) Span {
	out := Span{
		TraceID: hex.EncodeToString(sp.GetTraceId()), SpanID: hex.EncodeToString(sp.GetSpanId()),
		Name: sp.GetName(), Kind: kindName(sp.GetKind()), Service: service,
		Start: time.Unix(0, int64(sp.GetStartTimeUnixNano())), End: time.Unix(0, int64(sp.GetEndTimeUnixNano())),
		Error: sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
	}
	out.StartUS, out.DurationUS = out.Start.UnixMicro(), out.End.Sub(out.Start).Microseconds()
	if p := sp.GetParentSpanId(); len(p) > 0 {
		out.ParentID = hex.EncodeToString(p)
	}
	if len(sp.GetAttributes()) > 0 {
		out.Attributes = map[string]string{}
		for _, kv := range sp.GetAttributes() {
			out.Attributes[kv.GetKey()] = value(kv.GetValue())
		}
	}
	return out
}

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

// Service is the OTLP/gRPC trace receiver. It takes spans only from
// callers that presented a verified certificate (the mesh's proxies).
type Service struct {
	collectorpb.UnimplementedTraceServiceServer
	Store *Store
}

// Export implements OTLP's TraceService.
func (s *Service) Export(ctx context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	p, ok := peer.FromContext(ctx)
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !ok || !isTLS || len(info.State.VerifiedChains) == 0 {
		return nil, status.Error(codes.Unauthenticated, "spans are accepted from mesh proxies only: present the workload certificate")
	}
	s.Store.Add(req.GetResourceSpans())
	return &collectorpb.ExportTraceServiceResponse{}, nil
}
