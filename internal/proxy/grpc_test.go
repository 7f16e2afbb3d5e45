package proxy

// gRPC through the sidecars: one client connection, unary calls balanced
// per call over three replicas behind their inbound proxies, trailers and
// status codes intact.

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// grpcConn is a plaintext gRPC connection to addr (an app's side of its
// sidecar), closed when the test ends.
func grpcConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestGRPCBalancedPerCallOverOneConnection(t *testing.T) {
	m := newTestMesh(t, 3)
	// Replace each HTTP app by a gRPC server that names itself in a header.
	// The default policy (peak-EWMA) must spread the calls evenly.
	var eps []*meshpb.Endpoint
	var healths []*health.Server
	for i, in := range m.inbounds {
		name := fmt.Sprintf("grpc-%d", i)
		srv := grpc.NewServer(grpc.MaxConcurrentStreams(100), grpc.UnaryInterceptor(
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				_ = grpc.SetHeader(ctx, metadata.Pairs("x-replica", name))
				return h(ctx, req)
			}))
		hs := health.NewServer()
		healths = append(healths, hs)
		healthpb.RegisterHealthServer(srv, hs)
		ep := grpcBehind(t, m, in, srv)
		ep.Workload, ep.Namespace = "alpha", "db"
		eps = append(eps, ep)
	}
	metrics := telemetry.New("test")
	m.outbound.Metrics = metrics
	m.outbound.Update(&meshpb.ProxyConfig{Version: "g", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(), LoadBalancing: m.lb,
			Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_GRPC, Endpoints: eps}}}}})

	conn := grpcConn(t, m.appAddr)
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := map[string]int{}
	for i := 0; i < 3000; i++ {
		var md metadata.MD
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("call %d: %v, %v", i, resp, err)
		}
		got[md.Get("x-replica")[0]]++
	}
	checkEven(t, got, 3000, 3)

	// A server stream: one request message, then a response message per
	// status change; every gRPC message is counted each way.
	wctx, wcancel := context.WithCancel(ctx)
	watch, err := client.Watch(wctx, &healthpb.HealthCheckRequest{Service: "watched"})
	if err != nil {
		t.Fatal(err)
	}
	statuses := []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVICE_UNKNOWN, healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING,
	}
	for i, want := range statuses {
		if i > 0 {
			for _, hs := range healths {
				hs.SetServingStatus("watched", want)
			}
		}
		resp, err := watch.Recv()
		if err != nil || resp.GetStatus() != want {
			t.Fatalf("watch: %v, %v; want %v", resp, err, want)
		}
	}
	wcancel()
	grpcOnly := []string{`request_protocol="grpc"`}
	if n := scrapeWait(t, metrics, "istio_request_messages_total", grpcOnly, 3001); n != 3001 {
		t.Errorf("istio_request_messages_total = %v, want 3001 (3000 unary calls and the watch)", n)
	}
	if n := scrapeWait(t, metrics, "istio_response_messages_total", grpcOnly, 3003); n != 3003 {
		t.Errorf("istio_response_messages_total = %v, want 3003 (3000 unary answers and 3 watch updates)", n)
	}
	// The stream the client cancelled is counted, flagged as ended by the
	// downstream (the client).
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`response_flags="DC"`}, 1); n != 1 {
		t.Errorf("istio_requests_total{response_flags=DC} = %v, want 1 (the cancelled watch)", n)
	}

	// A failing call keeps its status through both proxies and is counted.
	unknown := conn.Invoke(ctx, "/trellis.Missing/Call", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(unknown) != codes.Unimplemented {
		t.Errorf("unknown method: %v, want Unimplemented", unknown)
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`grpc_response_status="12"`, `request_protocol="grpc"`}, 1); n != 1 {
		t.Errorf("istio_requests_total{grpc_response_status=12} = %v, want 1", n)
	}
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`grpc_response_status="0"`, `request_protocol="grpc"`}, 3000); n < 3000 {
		t.Errorf("istio_requests_total{grpc_response_status=0} = %v, want at least 3000", n)
	}
}

// A call the sidecars cannot deliver gets a gRPC status, as a gRPC server
// would answer: UNAVAILABLE, never an HTTP error page. It is recorded as
// gRPC records it (HTTP 200, grpc-status 14, with the flag), while the
// endpoint that failed still counts the failure: outlier detection ejects
// it. No endpoint (UH), an app that does not answer its sidecar (UF there,
// UNAVAILABLE to the client's), and an endpoint that takes no connection
// (UF); on the engine, and on net/http's path (a route with a timeout).
func TestGRPCUndeliveredCallsAreUnavailable(t *testing.T) {
	for _, routed := range []bool{false, true} {
		t.Run(map[bool]string{false: "engine", true: "a route with a timeout"}[routed], func(t *testing.T) {
			undeliveredCalls(t, routed)
		})
	}
}

// upAndGone is a mesh of two gRPC endpoints: up, whose app serves the
// health service, and appGone, whose sidecar's app is not there.
func upAndGone(t *testing.T) (m *testMesh, up, appGone *meshpb.Endpoint) {
	t.Helper()
	m = newTestMesh(t, 2)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	up = grpcBehind(t, m, m.inbounds[0], srv)
	gone := grpc.NewServer()
	appGone = grpcBehind(t, m, m.inbounds[1], gone)
	gone.Stop()
	return m, up, appGone
}

func undeliveredCalls(t *testing.T, routed bool) {
	m, up, appGone := upAndGone(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := &meshpb.Endpoint{Address: "127.0.0.1", Port: uint32(ln.Addr().(*net.TCPAddr).Port), Identity: m.serverID.String()}
	ln.Close()
	metrics, inMetrics := telemetry.New("test"), telemetry.New("test")
	m.outbound.Metrics, m.inbounds[1].Metrics = metrics, inMetrics
	serve := func(eps ...*meshpb.Endpoint) {
		svc := dbService("alpha", vip.Addr().String(), meshpb.Protocol_PROTOCOL_GRPC, eps...)
		cfg := &meshpb.ProxyConfig{Version: fmt.Sprint(len(eps)), Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default"},
			Services: []*meshpb.Service{svc}}
		if routed {
			svc.Ports[0].Endpoints = nil
			svc = dbService("alpha-both", "10.98.0.4", meshpb.Protocol_PROTOCOL_GRPC, eps...)
			cfg.Services = append(cfg.Services, svc)
			cfg.Routes = routesFrom(t, `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha}]
  rules:
  - timeouts: {request: 10s}
    backendRefs: [{name: alpha-both, port: 80}]
`)
		}
		svc.TrafficPolicy = &meshpb.TrafficPolicy{Source: "db/" + svc.GetName(),
			OutlierDetection: &meshpb.OutlierDetection{ConsecutiveGateway: 1, BaseEjectionMs: 30000, MaxEjectionPercent: 50}}
		m.outbound.Update(cfg)
	}
	client := healthpb.NewHealthClient(grpcConn(t, m.appAddr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	check := func() error {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	unavailable := func(what string, err error, why string) {
		t.Helper()
		if s, _ := status.FromError(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), why) {
			t.Errorf("%s: %v, want UNAVAILABLE saying %q", what, err, why)
		}
	}
	counted := func(m *telemetry.Metrics, flag string, want float64) {
		t.Helper()
		labels := []string{`response_code="200"`, `grpc_response_status="14"`, `response_flags="` + flag + `"`}
		if n := scrapeWait(t, m, "istio_requests_total", labels, want); n != want {
			t.Errorf("istio_requests_total{%s} = %v, want %v", strings.Join(labels, ","), n, want)
		}
	}

	serve()
	unavailable("no endpoint", check(), "no healthy upstream")
	counted(metrics, "UH", 1)

	// Each endpoint that fails fails once, then is ejected for the rest
	// of the test: its failure reached the client's balancer.
	failOnce := func(what, why string) {
		t.Helper()
		failed := 0
		for range 20 {
			if err := check(); err != nil {
				unavailable(what, err, why)
				if s, _ := status.FromError(err); why == "the app did not answer" && strings.Contains(s.Message(), "127.0.0.1") {
					t.Errorf("%s: the caller is told %q, not only that the app did not answer", what, s.Message())
				}
				failed++
			}
		}
		if failed != 1 {
			t.Errorf("%s: %d of 20 calls failed, want 1: the endpoint that failed is ejected after it", what, failed)
		}
	}
	serve(appGone, up)
	failOnce("an app that is not there", "the app did not answer")
	counted(inMetrics, "UF", 1)

	serve(down, up)
	failOnce("an endpoint that takes no connection", "endpoint "+endpointAddr(down))
	counted(metrics, "UF", 1)
}

// A route that retries 503s retries a gRPC call a sidecar answers
// UNAVAILABLE because its app is down, on another endpoint: every call
// succeeds.
func TestGRPCUnavailableIsRetried(t *testing.T) {
	m, up, appGone := upAndGone(t)
	metrics, inMetrics := telemetry.New("test"), telemetry.New("test")
	m.outbound.Metrics, m.inbounds[1].Metrics = metrics, inMetrics
	both := dbService("alpha-both", "10.98.0.4", meshpb.Protocol_PROTOCOL_GRPC, appGone, up)
	both.LoadBalancing = meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN
	m.outbound.Update(&meshpb.ProxyConfig{Version: "retry", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{dbService("alpha", vip.Addr().String(), meshpb.Protocol_PROTOCOL_GRPC), both},
		Routes: routesFrom(t, `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha}]
  rules:
  - retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: alpha-both, port: 80}]
`)})
	client := healthpb.NewHealthClient(grpcConn(t, m.appAddr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 10 {
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d: %v, want it retried on the endpoint whose app is up", i, err)
		}
	}
	if n := scrape(t, inMetrics, "istio_requests_total", []string{`response_flags="UF"`}); n < 1 {
		t.Error("no call reached the sidecar whose app is down: the test proves nothing")
	}
	if n := scrape(t, metrics, "trellis_route_retries_total", []string{`outcome="retried"`, `reason="status"`}); n < 1 {
		t.Errorf("trellis_route_retries_total{outcome=retried,reason=status} = %v, want the calls to the app that is down retried", n)
	}
}
