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

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
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
		ctx, parent := tp.Tracer("t").Start(context.Background(), "parent")
		_, child := tp.Tracer("t").Start(ctx, "child")
		child.End()
		parent.End()
		err = exp.ExportSpans(t.Context(), rec.Ended())
		if err == nil {
			if got := store.Trace(parent.SpanContext().TraceID().String()); len(got) != 2 || got[0].Name != "parent" ||
				got[1].ParentID != got[0].SpanID {
				t.Errorf("stored trace = %+v, want parent then its child", got)
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
