package telemetry

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// TracingConfig configures a proxy's tracing.
type TracingConfig struct {
	// Sampling is the percentage (0..100) of new traces recorded, as
	// Istio's tracing.sampling; a request that arrives with a trace keeps
	// its caller's decision.
	Sampling float64
	// Exporter receives finished spans (batched). Required: without one
	// NewTracing returns nil, which leaves requests as they are (their
	// trace headers pass through untouched) and costs nothing.
	Exporter sdktrace.SpanExporter
	// Service names this proxy's spans (service.name), e.g. the workload
	// and namespace as Istio names them: "alpha.db".
	Service string
}

// Tracing makes each proxied request a span and passes the trace on in
// W3C traceparent and B3 headers, as Envoy does for Istio: the app must
// copy the headers from its inbound request to its outbound ones for the
// trace to continue across it. Safe for concurrent use; nil is a valid
// Tracing that does nothing.
type Tracing struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// NewTracing returns tracing as cfg says, or nil without an exporter.
// Shutdown flushes its spans.
func NewTracing(cfg TracingConfig) *Tracing {
	if cfg.Exporter == nil {
		return nil
	}
	ratio := min(max(cfg.Sampling, 0), 100) / 100
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(cfg.Service))),
		// Small batches: one export must fit the control plane's 64 KiB
		// message limit (a proxy's span is well under 1 KiB). Sent within
		// a second, so a trace is complete by the time anyone looks.
		sdktrace.WithBatcher(cfg.Exporter, sdktrace.WithMaxExportBatchSize(32), sdktrace.WithBatchTimeout(time.Second)))
	return &Tracing{
		tp: tp, tracer: tp.Tracer("trellis-proxy"),
		// B3 first: when a request carries both, traceparent wins.
		prop: propagation.NewCompositeTextMapPropagator(b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)), propagation.TraceContext{}),
	}
}

// Start begins the span of r (kind trace.SpanKindClient on the outbound
// side, trace.SpanKindServer inbound), continuing the trace r's headers
// carry, and rewrites those headers so the next hop is its child. End the
// span with End.
func (t *Tracing) Start(r *http.Request, kind trace.SpanKind) (*http.Request, trace.Span) {
	return t.start(r, kind, true)
}

// StartUntrusted is Start for a request from outside the mesh: the trace
// its headers claim is not continued (a stranger could join or steer any
// trace, and force sampling); the span starts a new trace, linked to the
// claimed one for whoever wants to follow it.
func (t *Tracing) StartUntrusted(r *http.Request) (*http.Request, trace.Span) {
	return t.start(r, trace.SpanKindServer, false)
}

func (t *Tracing) start(r *http.Request, kind trace.SpanKind, trusted bool) (*http.Request, trace.Span) {
	if t == nil {
		return r, trace.SpanFromContext(context.Background())
	}
	ctx, span := t.startIn(r.Context(), propagation.HeaderCarrier(r.Header), kind, trusted, r.Host+r.URL.Path)
	return r.WithContext(ctx), span
}

// StartCarrier is Start for a request whose headers carrier reads and
// rewrites (the proxy's own request path keeps them as a list of fields,
// lower-case, not as an http.Header); name is the request's host and path.
func (t *Tracing) StartCarrier(carrier propagation.TextMapCarrier, kind trace.SpanKind, name string) trace.Span {
	if t == nil {
		return trace.SpanFromContext(context.Background())
	}
	_, span := t.startIn(context.Background(), carrier, kind, true, name)
	return span
}

func (t *Tracing) startIn(ctx context.Context, carrier propagation.TextMapCarrier, kind trace.SpanKind, trusted bool, name string) (context.Context, trace.Span) {
	ctx = t.prop.Extract(ctx, carrier)
	opts := []trace.SpanStartOption{trace.WithSpanKind(kind)}
	if !trusted {
		if remote := trace.SpanContextFromContext(ctx); remote.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: remote}))
		}
		opts = append(opts, trace.WithNewRoot())
	}
	ctx, span := t.tracer.Start(ctx, CleanValue(name), opts...)
	t.prop.Inject(ctx, carrier)
	return ctx, span
}

// End finishes span with what req says of the exchange, and returns the
// trace ID to remember with the request: empty when the span is not
// recorded (there is then no trace to look at).
func (t *Tracing) End(span trace.Span, req Request) string {
	if t == nil || !span.IsRecording() {
		return ""
	}
	span.SetAttributes(
		attribute.String("http.request.method", CleanValue(req.Method)),
		attribute.String("url.path", CleanValue(req.Path)),
		attribute.Int("http.response.status_code", req.Code),
		attribute.String("istio.reporter", req.Reporter),
		attribute.String("istio.source_workload", peerName(req.Source)),
		attribute.String("istio.destination_workload", peerName(req.Dest)),
		attribute.String("istio.destination_service", CleanValue(req.Service)),
		attribute.String("istio.destination_service_name", CleanValue(req.ServiceName)),
		attribute.String("istio.destination_service_namespace", CleanValue(req.ServiceNamespace)),
		attribute.String("istio.destination_principal", req.Dest.Principal),
		attribute.String("istio.request_protocol", req.Protocol),
		attribute.String("istio.grpc_status", CleanValue(req.GRPCStatus)),
		attribute.String("istio.response_flags", req.Flags),
		attribute.Bool("istio.mutual_tls", req.MutualTLS),
	)
	if req.GRPCStatus != "" {
		if n, err := strconv.Atoi(req.GRPCStatus); err == nil {
			span.SetAttributes(attribute.Int("rpc.grpc.status_code", n))
		}
	}
	if failedRequest(req) {
		span.SetStatus(codes.Error, "")
	}
	span.End()
	return span.SpanContext().TraceID().String()
}

func failedRequest(r Request) bool {
	if r.Protocol == "grpc" && r.GRPCStatus != "" {
		return r.GRPCStatus != "0"
	}
	return r.Code == 0 || r.Code >= 500
}

// Shutdown flushes and stops the exporter; ctx bounds the wait.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// peerName is "namespace/workload", or "unknown" outside the mesh.
func peerName(p Peer) string {
	if p.Workload == "" || p.Workload == "unknown" {
		return "unknown"
	}
	return p.Namespace + "/" + p.Workload
}
