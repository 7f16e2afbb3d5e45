package proxy

// AuthorizationPolicy enforced by the destination sidecar over real
// sockets and real mutual TLS: HTTP answered 403, gRPC PERMISSION_DENIED,
// TCP closed; the decisions counted per policy and named in the access
// log; dry-run policies recorded, never enforced.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// policy reads an AuthorizationPolicy's spec from YAML, in namespace db.
func policy(t *testing.T, name, spec string) authz.Policy {
	t.Helper()
	p := authz.Policy{Namespace: "db", Name: name}
	if err := yaml.UnmarshalStrict([]byte(spec), &p.Spec); err != nil {
		t.Fatalf("policy %s: %v", name, err)
	}
	return p
}

// authorize installs policies in the inbound proxy of m's single endpoint.
func (m *testMesh) authorize(services []*meshpb.Service, policies ...authz.Policy) {
	m.inbounds[0].SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha", Identity: m.serverID.String()},
		Services: services, Authorization: authz.ToProto(policies)})
}

func TestAuthorizationPolicyOnHTTP(t *testing.T) {
	m := newTestMesh(t, 1)
	dst := telemetry.New("test")
	var log syncBuffer
	m.inbounds[0].Metrics, m.inbounds[0].AccessLog = dst, slog.New(slog.NewJSONHandler(&log, nil))
	m.authorize(nil,
		policy(t, "allow-web", `rules: [{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [GET], paths: ["/public/*"]}}]}]`),
		policy(t, "deny-secret", `{action: DENY, rules: [{to: [{operation: {paths: ["/public/secret"]}}]}]}`),
		policy(t, "audit-all", `{action: AUDIT, rules: [{}]}`))
	mesh := "http://" + m.appAddr
	direct := "http://" + net.JoinHostPort(m.endpoints[0].GetAddress(), "0")
	direct = strings.TrimSuffix(direct, ":0") + ":" + itoa(m.endpoints[0].GetPort())
	for _, tc := range []struct {
		name, method, url string
		want              int
	}{
		{"allowed", "GET", mesh + "/public/a", 200},
		{"DENY wins over ALLOW", "GET", mesh + "/public/secret", 403},
		{"no ALLOW rule for POST", "POST", mesh + "/public/a", 403},
		{"matched on the normalised path", "GET", mesh + "/public/%2e%2e/admin", 403},
		{"DENY on the normalised path", "GET", mesh + "/public/x/../secret", 403},
		{"a plaintext caller has no namespace", "GET", direct + "/public/b", 403},
	} {
		req, _ := http.NewRequest(tc.method, tc.url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s %s answered %d %q, want %d", tc.name, tc.method, tc.url, resp.StatusCode, body, tc.want)
		}
		if tc.want == 403 && string(body) != deniedText {
			t.Errorf("%s: denied with body %q, want %q", tc.name, body, deniedText)
		}
	}
	for _, c := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"istio_requests_total", []string{`response_code="403"`, `response_flags="RBAC"`, `connection_security_policy="mutual_tls"`}, 4},
		{"istio_requests_total", []string{`response_code="403"`, `response_flags="RBAC"`, `connection_security_policy="none"`}, 1},
		{"istio_requests_total", []string{`response_code="200"`, `response_flags="-"`}, 1},
		{"trellis_authz_decisions_total", []string{`policy="db/deny-secret"`, `action="DENY"`, `result="denied"`}, 2},
		{"trellis_authz_decisions_total", []string{`policy="db/allow-web"`, `action="ALLOW"`, `result="allowed"`}, 1},
		{"trellis_authz_decisions_total", []string{`policy="-"`, `action="ALLOW"`, `result="denied"`}, 3},
		{"trellis_authz_decisions_total", []string{`policy="db/audit-all"`, `action="AUDIT"`, `result="audited"`}, 6},
	} {
		if got := scrapeWait(t, dst, c.metric, c.labels, c.want); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	entries := accessEntries(t, &log, 6)
	if e := entries["GET /public/secret"]; e["authz_policy"] != "db/deny-secret" || e["authz_result"] != "deny denied" || e["flags"] != "RBAC" ||
		e["authz_audited"] != "db/audit-all" {
		t.Errorf("access log of the denied request: %v, want it to name db/deny-secret, the RBAC flag and the audit", e)
	}
	if e := entries["GET /public/a"]; e["authz_policy"] != "db/allow-web" {
		t.Errorf("access log of the allowed request: %v, want it to name db/allow-web", e)
	}

	// In dry run a policy is evaluated and recorded, never enforced.
	dry := policy(t, "dry-deny-get", `{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}`)
	dry.DryRun = true
	m.authorize(nil, dry)
	resp, err := http.Get(mesh + "/anything")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a dry-run DENY policy was enforced: %s", resp.Status)
	}
	if got := scrapeWait(t, dst, "trellis_authz_decisions_total", []string{`policy="db/dry-deny-get"`, `result="dry_run_denied"`}, 1); got != 1 {
		t.Errorf("dry-run denials counted %v, want 1", got)
	}
	if e := accessEntries(t, &log, 7)["GET /anything"]; e["authz_dry_run"] != "denied by db/dry-deny-get" {
		t.Errorf("access log of the dry-run request: %v, want authz_dry_run naming the policy", e)
	}
	// Without policies, everything passes again.
	m.authorize(nil)
	if resp, err := http.Post(mesh+"/public/secret", "text/plain", nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("no policies: %v %v, want 200", resp.Status, err)
	}
}

func itoa(p uint32) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p)).String()[len("0.0.0.0:"):]
}

// accessEntries waits for n access-log entries and returns them by
// "METHOD path".
func accessEntries(t *testing.T, log *syncBuffer, n int) map[string]map[string]any {
	t.Helper()
	var lines []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		lines = strings.Split(strings.TrimSpace(log.String()), "\n")
		if len(lines) >= n || time.Now().After(deadline) {
			break
		}
	}
	out := map[string]map[string]any{}
	for _, l := range lines {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		m, _ := e["method"].(string)
		p, _ := e["path"].(string)
		out[m+" "+p] = e
	}
	return out
}

// newGRPCMesh is a test mesh whose one endpoint is a gRPC health server
// behind its inbound proxy, the outbound routing to it; it returns the
// services, for the inbound's config.
func newGRPCMesh(t *testing.T) (*testMesh, []*meshpb.Service) {
	t.Helper()
	m := newTestMesh(t, 1)
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(100))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	in := m.inbounds[0]
	appPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	addr := netip.MustParseAddrPort(serve(t, func(c net.Conn) { in.HandleConn(c, appPort) }))
	services := []*meshpb.Service{{Namespace: "db", Name: "alpha", Vip: vip.Addr().String(),
		Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_GRPC,
			Endpoints: []*meshpb.Endpoint{{Address: addr.Addr().String(), Port: uint32(addr.Port()), Identity: m.serverID.String()}}}}}}
	m.outbound.Update(&meshpb.ProxyConfig{Version: "g", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: services})
	return m, services
}

func TestAuthorizationPolicyOnGRPC(t *testing.T) {
	m, services := newGRPCMesh(t)
	in := m.inbounds[0]
	dst := telemetry.New("test")
	in.Metrics = dst
	m.authorize(services, policy(t, "no-check", `{action: DENY, rules: [{to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]}]}`))
	conn, err := grpc.NewClient(m.appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if s := status.Convert(err); s.Code() != codes.PermissionDenied || s.Message() != deniedText {
		t.Errorf("denied call: %v, want PERMISSION_DENIED %q", err, deniedText)
	}
	labels := []string{`grpc_response_status="7"`, `response_flags="RBAC"`, `request_protocol="grpc"`}
	if got := scrapeWait(t, dst, "istio_requests_total", labels, 1); got != 1 {
		t.Errorf("istio_requests_total%v = %v, want 1", labels, got)
	}
	m.authorize(services, policy(t, "no-watch", `{action: DENY, rules: [{to: [{operation: {paths: ["/grpc.health.v1.Health/Watch"]}}]}]}`))
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("a call no policy denies: %v", err)
	}
}

// A denied TCP connection is closed before the app sees it; a rule with
// HTTP-only fields matches no connection in an ALLOW policy and every one
// in a DENY policy (Istio's TCP semantics).
func TestAuthorizationPolicyOnTCP(t *testing.T) {
	m := newTestMesh(t, 1)
	dst := telemetry.New("test")
	in := m.inbounds[0]
	in.Metrics = dst
	appAddr := serve(t, func(c net.Conn) {
		defer c.Close()
		io.WriteString(c, "220 ready\n")
		io.Copy(io.Discard, c)
	})
	appPort := uint16(netip.MustParseAddrPort(appAddr).Port())
	inAddr := netip.MustParseAddrPort(serve(t, func(c net.Conn) { in.HandleConn(c, appPort) }))
	services := []*meshpb.Service{{Namespace: "db", Name: "smtp", Vip: vip.Addr().String(),
		Ports: []*meshpb.ServicePort{{Port: uint32(vip.Port()), Protocol: meshpb.Protocol_PROTOCOL_TCP, Endpoints: []*meshpb.Endpoint{
			{Address: inAddr.Addr().String(), Port: uint32(inAddr.Port()), Identity: m.serverID.String()}}}}}}
	m.outbound.Update(&meshpb.ProxyConfig{Version: "t", Workload: &meshpb.Workload{Identity: "spiffe://cluster.local/ns/web/sa/default",
		Name: "web-client", Namespace: "web"}, Services: services})
	greeted := func() bool {
		c, err := net.Dial("tcp", m.appAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(io.LimitReader(c, 10))
		if err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("reading the greeting: %v", err)
		}
		return string(b) == "220 ready\n"
	}
	port := itoa(uint32(appPort))
	for _, tc := range []struct {
		name   string
		policy authz.Policy
		want   bool
	}{
		{"ALLOW another principal", policy(t, "other", `rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/x]}}]}]`), false},
		{"ALLOW the caller's principal", policy(t, "web", `rules: [{from: [{source: {principals: [cluster.local/ns/web/*]}}]}]`), true},
		{"ALLOW with an HTTP-only field", policy(t, "get", `rules: [{to: [{operation: {methods: [GET]}}]}]`), false},
		{"ALLOW the app's port", policy(t, "port", `rules: [{to: [{operation: {ports: ["`+port+`"]}}]}]`), true},
		{"DENY with an HTTP-only field", policy(t, "deny-get", `{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}`), false},
		{"DENY another port", policy(t, "deny-port", `{action: DENY, rules: [{to: [{operation: {ports: ["1"], paths: ["/x"]}}]}]}`), true},
	} {
		m.authorize(services, tc.policy)
		if got := greeted(); got != tc.want {
			t.Errorf("%s: connection served %v, want %v", tc.name, got, tc.want)
		}
	}
	labels := []string{`response_flags="RBAC"`, `source_workload="web-client"`, `connection_security_policy="mutual_tls"`}
	if got := scrapeWait(t, dst, "istio_tcp_connections_opened_total", labels, 3); got != 3 {
		t.Errorf("istio_tcp_connections_opened_total%v = %v, want 3", labels, got)
	}
}

// Each field of Istio's AuthorizationPolicy decides real requests: an
// ALLOW policy with one rule on the field, a request over the mesh (mTLS
// from spiffe://cluster.local/ns/web/sa/default to 127.0.0.1), and the
// answer. Without a JWT, request principals and auth conditions match
// nothing.
func TestAuthorizationFieldsOnRealRequests(t *testing.T) {
	m := newTestMesh(t, 1)
	port := itoa(uint32(m.appPort))
	host := m.appAddr
	for _, tc := range []struct {
		rule, method, path string
		want               int
	}{
		{`from: [{source: {principals: [cluster.local/ns/web/sa/default]}}]`, "GET", "/", 200},
		{`from: [{source: {principals: ["*/ns/web/*"]}}]`, "GET", "/", 403}, // prefix or suffix, not both
		{`from: [{source: {principals: ["cluster.local/ns/web/*"]}}]`, "GET", "/", 200},
		{`from: [{source: {principals: ["*/sa/default"]}}]`, "GET", "/", 200},
		{`from: [{source: {notPrincipals: [cluster.local/ns/web/sa/default]}}]`, "GET", "/", 403},
		{`from: [{source: {namespaces: [web]}}]`, "GET", "/", 200},
		{`from: [{source: {notNamespaces: [web]}}]`, "GET", "/", 403},
		{`from: [{source: {ipBlocks: [127.0.0.0/8]}}]`, "GET", "/", 200},
		{`from: [{source: {notIpBlocks: [127.0.0.1]}}]`, "GET", "/", 403},
		{`from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]`, "GET", "/", 403},
		{`from: [{source: {notRemoteIpBlocks: [10.0.0.0/8]}}]`, "GET", "/", 200},
		{`from: [{source: {requestPrincipals: ["*"]}}]`, "GET", "/", 403},
		{`from: [{source: {notRequestPrincipals: ["*"]}}]`, "GET", "/", 200},
		{`to: [{operation: {hosts: ["` + host + `"]}}]`, "GET", "/", 200},
		{`to: [{operation: {notHosts: ["127.0.0.1*"]}}]`, "GET", "/", 403},
		{`to: [{operation: {ports: ["` + port + `"]}}]`, "GET", "/", 200},
		{`to: [{operation: {notPorts: ["` + port + `"]}}]`, "GET", "/", 403},
		{`to: [{operation: {methods: [GET, HEAD]}}]`, "POST", "/", 403},
		{`to: [{operation: {notMethods: [POST]}}]`, "GET", "/", 200},
		{`to: [{operation: {paths: ["/api/*"]}}]`, "GET", "/api/v1", 200},
		{`to: [{operation: {paths: ["*.json"]}}]`, "GET", "/a/b.json", 200},
		{`to: [{operation: {notPaths: ["/admin*"]}}]`, "GET", "/admin/x", 403},
		{`to: [{operation: {paths: ["/users/{*}/profile"]}}]`, "GET", "/users/7/profile", 200},
		{`to: [{operation: {paths: ["/users/{*}/profile"]}}]`, "GET", "/users/7/8/profile", 403},
		{`to: [{operation: {paths: ["/files/{**}"]}}]`, "GET", "/files/a/b/c", 200},
		{`when: [{key: "request.headers[x-team]", values: [blue]}]`, "GET", "/", 200},
		{`when: [{key: "request.headers[x-team]", notValues: [blue]}]`, "GET", "/", 403},
		{`when: [{key: source.ip, values: [127.0.0.1]}]`, "GET", "/", 200},
		{`when: [{key: remote.ip, notValues: [127.0.0.0/8]}]`, "GET", "/", 403},
		{`when: [{key: source.namespace, values: [web]}]`, "GET", "/", 200},
		{`when: [{key: source.principal, values: ["*/sa/default"]}]`, "GET", "/", 200},
		{`when: [{key: destination.ip, values: [127.0.0.1]}]`, "GET", "/", 200},
		{`when: [{key: destination.port, values: ["` + port + `"]}]`, "GET", "/", 200},
		{`when: [{key: connection.sni, values: ["*"]}]`, "GET", "/", 403}, // sidecars send no SNI
		{`when: [{key: request.auth.principal, values: ["*"]}]`, "GET", "/", 403},
		{`when: [{key: "request.auth.claims[groups]", values: [admins]}]`, "GET", "/", 403},
		{`{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [POST]}}]}`, "GET", "/", 403}, // fields are ANDed
	} {
		m.authorize(nil, policy(t, "p", "rules: [{"+strings.Trim(tc.rule, "{}")+"}]"))
		req, _ := http.NewRequest(tc.method, "http://"+m.appAddr+tc.path, nil)
		req.Header.Set("X-Team", "blue")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.rule, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("ALLOW %s; %s %s: %d, want %d", tc.rule, tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}
