package telemetry

import (
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// A proxy continues the trace a request carries (W3C traceparent, else
// B3), starts one when there is none, and hands the next hop both header
// formats naming its own span as the parent.
func TestTracingPropagates(t *testing.T) {
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		parent  = "00f067aa0ba902b7"
	)
	tests := []struct {
		name      string
		headers   map[string]string
		wantTrace string // "" for a new one
	}{
		{"traceparent", map[string]string{"traceparent": "00-" + traceID + "-" + parent + "-01"}, traceID},
		{"b3 only", map[string]string{"X-B3-TraceId": traceID, "X-B3-SpanId": parent, "X-B3-Sampled": "1"}, traceID},
		{"both: traceparent wins", map[string]string{"traceparent": "00-" + traceID + "-" + parent + "-01",
			"X-B3-TraceId": "11111111111111111111111111111111", "X-B3-SpanId": parent, "X-B3-Sampled": "1"}, traceID},
		{"none", nil, ""},
		{"garbage", map[string]string{"traceparent": "not-a-trace"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exp := tracetest.NewInMemoryExporter()
			tr := NewTracing(TracingConfig{Sampling: 100, Exporter: exp, Service: "alpha.db"})
			r := httptest.NewRequest("GET", "http://alpha.db/health", nil)
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			r, span := tr.Start(r, trace.SpanKindServer)
			got := tr.End(span, Request{Reporter: "destination", Protocol: "http", Code: 200, Method: "GET", Path: "/health"})
			if err := tr.tp.ForceFlush(t.Context()); err != nil { // Shutdown would empty the in-memory exporter
				t.Fatal(err)
			}
			if tt.wantTrace != "" && got != tt.wantTrace {
				t.Errorf("trace ID %q, want the caller's %s", got, tt.wantTrace)
			}
			if len(got) != 32 || got == "00000000000000000000000000000000" {
				t.Fatalf("trace ID %q, want a valid one", got)
			}
			spans := exp.GetSpans()
			if len(spans) != 1 || spans[0].SpanContext.TraceID().String() != got {
				t.Fatalf("exported %d spans, want the one of trace %s", len(spans), got)
			}
			own := spans[0].SpanContext.SpanID().String()
			if tt.wantTrace != "" && spans[0].Parent.SpanID().String() != parent {
				t.Errorf("span's parent %s, want the caller's %s", spans[0].Parent.SpanID(), parent)
			}
			if tp := r.Header.Get("traceparent"); !strings.Contains(tp, got+"-"+own) {
				t.Errorf("next hop's traceparent %q, want trace %s with parent %s", tp, got, own)
			}
			if b3 := r.Header.Get("X-B3-SpanId"); b3 != own || r.Header.Get("X-B3-TraceId") != got {
				t.Errorf("next hop's B3 headers %q/%q, want %s/%s", r.Header.Get("X-B3-TraceId"), b3, got, own)
			}
		})
	}
}

// Sampling 0 records no new trace, yet still passes a context on; a
// caller's decision to sample wins over it. Without an exporter there is
// no tracing at all: requests pass as they came.
func TestTracingSampling(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr := NewTracing(TracingConfig{Sampling: 0, Exporter: exp})
	r, span := tr.Start(httptest.NewRequest("GET", "http://a/", nil), trace.SpanKindClient)
	if id := tr.End(span, Request{Code: 200}); id != "" {
		t.Errorf("unsampled request got trace ID %q, want none", id)
	}
	if !strings.HasSuffix(r.Header.Get("traceparent"), "-00") {
		t.Errorf("unsampled request's traceparent %q, want one with the not-sampled flag", r.Header.Get("traceparent"))
	}
	in := httptest.NewRequest("GET", "http://a/", nil)
	in.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	_, span = tr.Start(in, trace.SpanKindServer)
	if id := tr.End(span, Request{Code: 200}); id != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("sampled caller: trace ID %q, want the caller's", id)
	}

	none := NewTracing(TracingConfig{Sampling: 100})
	if none != nil {
		t.Fatal("NewTracing without an exporter is not nil")
	}
	in = httptest.NewRequest("GET", "http://a/", nil)
	in.Header.Set("X-B3-TraceId", "4bf92f3577b34da6a3ce929d0e0e4736")
	r, span = none.Start(in, trace.SpanKindClient)
	if none.End(span, Request{}) != "" || r != in || r.Header.Get("traceparent") != "" || r.Header.Get("X-B3-TraceId") != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Error("tracing without an exporter changed the request; want its headers passed through as they came")
	}
}

// TestSpansFromHostileRequests: a path or host that is not valid UTF-8
// (a request for /%FF) once made the whole OTLP batch fail to marshal,
// hiding its neighbours' spans; what reaches a span is valid, capped UTF-8.
func TestSpansFromHostileRequests(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr := NewTracing(TracingConfig{Sampling: 100, Exporter: exp, Service: "alpha.db"})
	r := httptest.NewRequest("GET", "http://alpha.db/%FF", nil)
	r, span := tr.Start(r, trace.SpanKindServer)
	tr.End(span, Request{Reporter: "destination", Protocol: "http", Code: 200, Method: "G\xffT", Path: r.URL.Path,
		Service: strings.Repeat("s", 10000), GRPCStatus: "\xfe"})
	if err := tr.tp.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	if !utf8.ValidString(spans[0].Name) {
		t.Errorf("span name %q is not UTF-8", spans[0].Name)
	}
	for _, a := range spans[0].Attributes {
		if v := a.Value.String(); !utf8.ValidString(v) || len(v) > MaxValueBytes {
			t.Errorf("attribute %s = %q (%d bytes)", a.Key, v, len(v))
		}
	}
}

func TestGRPCStatusLabel(t *testing.T) {
	for in, want := range map[string]string{"": "-", "0": "0", "16": "16", "17": "unknown", "-1": "unknown", "007": "unknown", "OK": "unknown"} {
		if got := grpcStatusLabel(in); got != want {
			t.Errorf("grpcStatusLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestUntrustedTraceIsLinkedNotContinued: a caller outside the mesh cannot
// join (or force the sampling of) a trace by sending its traceparent: its
// request starts a new trace, linked to the one it named.
func TestUntrustedTraceIsLinkedNotContinued(t *testing.T) {
	const claimed = "4bf92f3577b34da6a3ce929d0e0e4736"
	exp := tracetest.NewInMemoryExporter()
	tr := NewTracing(TracingConfig{Sampling: 100, Exporter: exp, Service: "alpha.db"})
	r := httptest.NewRequest("GET", "http://alpha.db/", nil)
	r.Header.Set("traceparent", "00-"+claimed+"-00f067aa0ba902b7-01")
	r, span := tr.StartUntrusted(r)
	got := tr.End(span, Request{Reporter: "destination", Protocol: "http", Code: 200})
	if err := tr.tp.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	if got == claimed || len(spans) != 1 || spans[0].Parent.IsValid() {
		t.Fatalf("the stranger's trace was continued (trace %s, parent %v)", got, spans[0].Parent)
	}
	if len(spans[0].Links) != 1 || spans[0].Links[0].SpanContext.TraceID().String() != claimed {
		t.Errorf("links %v, want one to the claimed trace", spans[0].Links)
	}
	if !strings.Contains(r.Header.Get("traceparent"), got) {
		t.Errorf("the app was handed traceparent %q, not the new trace %s", r.Header.Get("traceparent"), got)
	}
}
