package tracestore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// The real OpenTelemetry exporter a sidecar uses sends its spans to a
// Service over TLS: with a mesh certificate they are stored and read
// back as one trace; without one they are refused.
func TestExportOverTLS(t *testing.T) {
	auth, err := ca.NewRoot("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ns, sa string) tls.Certificate {
		id, _ := identity.ForWorkload("cluster.local", ns, sa)
		svid, err := auth.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return svid.TLSCertificate()
	}
	roots := x509.NewCertPool()
	for _, r := range auth.Bundle() {
		roots.AddCert(r)
	}
	store := New()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{issue("trellis-system", "trellis-control")}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: roots})),
		grpc.MaxConcurrentStreams(10), grpc.ConnectionTimeout(5*time.Second), grpc.MaxRecvMsgSize(64<<10))
	collectorpb.RegisterTraceServiceServer(srv, &Service{Store: store})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Stop()

	export := func(client *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: roots, ServerName: "x", InsecureSkipVerify: true} // the identity check is meshtls's, tested there
		if client != nil {
			cfg.Certificates = []tls.Certificate{*client}
		}
		exp, err := otlptracegrpc.New(t.Context(), otlptracegrpc.WithEndpoint(ln.Addr().String()),
			otlptracegrpc.WithTLSCredentials(credentials.NewTLS(cfg)), otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
		if err != nil {
			t.Fatal(err)
		}
		defer exp.Shutdown(context.Background())
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		// The caller's own spans, as destination and as source, and two
		// it could not have recorded: another workload's destination
		// span, and a source span of another namespace.
		ctx, parent := tp.Tracer("t").Start(context.Background(), "parent", trace.WithAttributes(
			attribute.String("istio.reporter", "destination"), attribute.String("istio.destination_principal", "spiffe://cluster.local/ns/db/sa/default")))
		_, child := tp.Tracer("t").Start(ctx, "child", trace.WithAttributes(
			attribute.String("istio.reporter", "source"), attribute.String("istio.source_workload", "db/alpha")))
		_, forged := tp.Tracer("t").Start(ctx, "forged", trace.WithAttributes(
			attribute.String("istio.reporter", "destination"), attribute.String("istio.destination_principal", "spiffe://cluster.local/ns/bank/sa/vault")))
		_, forged2 := tp.Tracer("t").Start(ctx, "forged2", trace.WithAttributes(
			attribute.String("istio.reporter", "source"), attribute.String("istio.source_workload", "bank/teller")))
		for _, sp := range []trace.Span{forged2, forged, child, parent} {
			sp.End()
		}
		err = exp.ExportSpans(t.Context(), rec.Ended())
		if err == nil {
			if got := store.Trace(parent.SpanContext().TraceID().String()); len(got) != 2 || got[0].Name != "parent" ||
				got[1].ParentID != got[0].SpanID {
				t.Errorf("stored trace = %+v, want parent then its child, not the spans the caller could not have recorded", got)
			}
		}
		return err
	}
	cert := issue("db", "default")
	if err := export(&cert); err != nil {
		t.Fatalf("export with a mesh certificate: %v", err)
	}
	err = export(nil)
	if status.Code(err) != codes.Unauthenticated {
		// The exporter may wrap the status; look for it in the text too.
		if err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
			t.Errorf("export without a certificate = %v, want Unauthenticated", err)
		}
	}
}

// The store keeps the newest MaxTraces traces.
func TestStoreBounds(t *testing.T) {
	s := New()
	for i := range MaxTraces + 10 {
		s.addLocked(Span{TraceID: string(rune('a'+i%26)) + time.Duration(i).String(), SpanID: "x"})
	}
	if len(s.traces) != MaxTraces || len(s.order) != MaxTraces {
		t.Errorf("%d traces kept, want %d", len(s.traces), MaxTraces)
	}
	for range MaxSpans + 5 {
		s.addLocked(Span{TraceID: "big", SpanID: "x"})
	}
	if n := len(s.Trace("big")); n != MaxSpans {
		t.Errorf("a trace of %d spans kept %d, want %d", MaxSpans+5, n, MaxSpans)
	}
	// Recent: the newest MaxRecent spans, newest first, across the ring's wrap.
	for i := range MaxRecent + 7 {
		s.addLocked(Span{TraceID: "r", SpanID: strconv.Itoa(i)})
	}
	recent := s.Recent()
	if len(recent) != MaxRecent || recent[0].SpanID != strconv.Itoa(MaxRecent+6) || recent[MaxRecent-1].SpanID != "7" {
		t.Errorf("Recent: %d spans, newest %q, oldest %q; want %d, %q, %q",
			len(recent), recent[0].SpanID, recent[len(recent)-1].SpanID, MaxRecent, strconv.Itoa(MaxRecent+6), "7")
	}
}

// The store is bounded by bytes too: huge spans are cut to MaxAttributes
// capped attributes, and the oldest traces go once MaxBytes is reached.
func TestStoreBytesBound(t *testing.T) {
	s := New()
	var attrs []*commonpb.KeyValue
	for i := range 100 {
		attrs = append(attrs, &commonpb.KeyValue{Key: strconv.Itoa(i) + strings.Repeat("k", 1000),
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: strings.Repeat("v", 10000)}}})
	}
	for i := range 5000 {
		id := []byte{byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
		s.Add([]*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{
			{TraceId: id, SpanId: id[:8], Name: strings.Repeat("n", 5000), Attributes: attrs}}}}}})
	}
	if s.bytes > MaxBytes {
		t.Errorf("the store holds %d bytes, more than %d", s.bytes, MaxBytes)
	}
	if len(s.order) >= 5000 || len(s.order) < 100 {
		t.Errorf("%d traces kept of 5000 huge ones", len(s.order))
	}
	newest := s.Trace(s.order[len(s.order)-1])
	if len(newest) != 1 || len(newest[0].Attributes) != MaxAttributes || len(newest[0].Name) > 256 {
		t.Fatalf("a huge span was kept as %d attributes, a name of %d bytes", len(newest[0].Attributes), len(newest[0].Name))
	}
	for k, v := range newest[0].Attributes {
		if len(k) > 256 || len(v) > 256 {
			t.Errorf("attribute of %d+%d bytes kept", len(k), len(v))
		}
	}
}
