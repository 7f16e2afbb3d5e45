package cli_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// authzExtras add to the walkthrough a second meshed client (client-other)
// and a TCP service in db whose server speaks first, so the same policies
// are tried on HTTP, gRPC and an opaque TCP port.
const authzExtras = `
---
apiVersion: v1
kind: Namespace
metadata: {name: client-other, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: client-other, labels: {app: client}}
spec:
  containers:
  - {name: shell, image: curlimages/curl, command: [sleep, infinity]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-tcp, namespace: db}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo-tcp}}
  template:
    metadata: {labels: {app: demo-tcp}}
    spec:
      containers:
      - name: tcp
        image: trellis/demo-graph
        command: [trellis, example, ports-server, --port, "9000"]
        ports: [{name: tcp, containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: demo-tcp, namespace: db}
spec:
  selector: {app: demo-tcp}
  ports: [{name: tcp, port: 9000, targetPort: tcp}]
`

// The database's policies as an operator writes them for Istio: only
// client-allow's principal may use alpha (health, queries, CheckVersion)
// and the TCP service.
const authzAllow = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: alpha-clients, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/client-allow/sa/default]}}]
    to:
    - operation: {methods: [GET], paths: [/health]}
    - operation: {methods: [POST], paths: [/query]}
    - operation: {paths: [/trellis.demo.graph.v1.Graph/CheckVersion]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: tcp-clients, namespace: db}
spec:
  targetRefs: [{kind: Service, name: demo-tcp}]
  rules:
  - from: [{source: {namespaces: [client-allow]}}]
`

// A DENY on POST /query from anyone wins over the ALLOW.
const authzDenyQuery = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-queries, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  action: DENY
  rules:
  - to: [{operation: {methods: [POST], paths: [/query]}}]
`

// The walkthrough extended into the mesh, with real sidecars in network
// namespaces: with mesh-members-only in place, AuthorizationPolicies let
// client-allow's principal in and keep another meshed client out, on
// HTTP (403), gRPC (PERMISSION_DENIED) and TCP (closed); a DENY wins over
// the ALLOW; the destination sidecar counts each decision by policy.
func TestAuthorizationPolicyWithSidecars(t *testing.T) {
	m := newMesh(t)
	base, err := os.ReadFile("../../examples/demo/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m.up(string(base) + authzExtras)
	m.must("apply", "-f", "../../examples/demo/policy.yaml")
	file := func(doc string) string {
		path := filepath.Join(t.TempDir(), "authz.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	apply := func(doc string) { m.must("apply", "-f", file(doc)) }
	// call runs a graph-client call (or a TCP probe) from ns's client and
	// returns its output, or its error output when it failed.
	call := func(ns string, args ...string) (string, bool) {
		out, errOut, err := m.run(append([]string{"exec", "-n", ns, "client", "--", "trellis", "example"}, args...)...)
		if err != nil {
			return errOut, false
		}
		return out, true
	}
	health := []string{"graph-client", "health", "--timeout", "3s"}
	query := []string{"graph-client", "query", "--type", "Film", "--timeout", "3s"}
	version := []string{"graph-client", "check-version", "--timeout", "3s"}
	tcp := []string{"probe", "--timeout", "2s", "tcp/demo-tcp.db.svc.cluster.local:9000"}
	// Until client-other's sidecar has its config, its calls leave it
	// plaintext (passthrough) and alpha's sidecar sees no principal: wait
	// for one it saw over mutual TLS. Its calls go to either version of
	// alpha (client-allow's route sends only client-allow's to v2): enough
	// of them that both versions see some (a miss is 1 in 2^15).
	waitFor(t, "client-other to reach alpha over mTLS before any AuthorizationPolicy", 60*time.Second, func() bool {
		for range 16 {
			if _, ok := call("client-other", health...); !ok {
				return false
			}
		}
		out, _, err := m.run("authz", "suggest", "-n", "db", "--window", "10m")
		return err == nil && strings.Contains(out, "cluster.local/ns/client-other/sa/default")
	})

	// Policies suggested from what the sidecars let in: applied, they deny
	// nothing that was observed (client-other's health checks, client-allow's
	// CheckVersion) and what was not (client-allow's health checks,
	// client-other's CheckVersion).
	if out, ok := call("client-allow", version...); !ok {
		t.Fatalf("client-allow CheckVersion before any policy: %s", out)
	}
	suggested := m.must("authz", "suggest", "-n", "db", "--window", "10m")
	for _, want := range []string{"name: demo-graph-alpha-v1-observed", "name: demo-graph-alpha-v2-observed", "istio.io/dry-run: \"true\"", "cluster.local/ns/client-other/sa/default",
		"/trellis.demo.graph.v1.Graph/CheckVersion", "/health"} {
		if !strings.Contains(suggested, want) {
			t.Errorf("trellis authz suggest has no %q:\n%s", want, suggested)
		}
	}
	if out := m.must("authz", "check", "-f", file(suggested), "--window", "10m"); !strings.Contains(out, "nothing observed would be denied") {
		t.Errorf("trellis authz check of the suggestion: %s", out)
	}
	if out, _, err := m.run("authz", "check", "-f", file(authzAllow), "--window", "10m"); err == nil ||
		!strings.Contains(out, "cluster.local/ns/client-other/sa/default") || !strings.Contains(out, "/health") {
		t.Errorf("trellis authz check of a policy keeping client-other out: %v\n%s\nwant client-other's health checks listed, exit 1", err, out)
	}
	enforced := file(strings.ReplaceAll(suggested, `istio.io/dry-run: "true"`, `istio.io/dry-run: "false"`))
	m.must("apply", "-f", enforced)
	waitFor(t, "the suggested policy to refuse what was not observed", 20*time.Second, func() bool {
		out, ok := call("client-allow", health...)
		return !ok && strings.Contains(out, "403")
	})
	if out, ok := call("client-other", health...); !ok {
		t.Errorf("client-other's observed health check, under the suggested policy: %s", out)
	}
	if out, ok := call("client-allow", version...); !ok {
		t.Errorf("client-allow's observed CheckVersion, under the suggested policy: %s", out)
	}
	if out, ok := call("client-other", version...); ok || !strings.Contains(out, "PermissionDenied") {
		t.Errorf("client-other's CheckVersion, never observed, under the suggested policy: %s", out)
	}
	m.must("delete", "-f", enforced)

	apply(authzAllow)
	waitFor(t, "the ALLOW policy to keep client-other out", 20*time.Second, func() bool {
		out, ok := call("client-other", health...)
		return !ok && strings.Contains(out, "403")
	})
	for _, c := range []struct {
		what string
		args []string
	}{{"GET /health", health}, {"POST /query", query}, {"CheckVersion", version}} {
		if out, ok := call("client-allow", c.args...); !ok {
			t.Errorf("client-allow %s: refused: %s", c.what, out)
		}
	}
	if out, ok := call("client-other", version...); ok || !strings.Contains(out, "PermissionDenied: RBAC: access denied") {
		t.Errorf("client-other CheckVersion: %q (ok %v), want PERMISSION_DENIED with RBAC: access denied", out, ok)
	}
	if out, ok := call("client-other", query...); ok || !strings.Contains(out, "403") {
		t.Errorf("client-other POST /query: %q (ok %v), want 403", out, ok)
	}
	// trellis explain says the same from the sidecars' configs.
	for _, c := range []struct{ ns, want string }{
		{"client-allow", "allowed by db/alpha-clients, rule 0"},
		{"client-other", "denied: ALLOW policies apply and none of their rules matches"},
	} {
		if out := m.must("explain", "-n", c.ns, "client", "http://demo-graph-alpha.db:8080/health"); !strings.Contains(out, c.want) {
			t.Errorf("trellis explain from %s:\n%s\nwant %q", c.ns, out, c.want)
		}
	}
	if out, _ := call("client-allow", tcp...); !strings.Contains(out, " ok") {
		t.Errorf("client-allow to the TCP service: %q, want served", out)
	}
	if out, _ := call("client-other", tcp...); !strings.Contains(out, " fail") {
		t.Errorf("client-other to the TCP service: %q, want the connection closed unanswered", out)
	}

	denyQuery := file(authzDenyQuery)
	m.must("apply", "-f", denyQuery)
	waitFor(t, "the DENY policy to win over the ALLOW", 20*time.Second, func() bool {
		out, ok := call("client-allow", query...)
		return !ok && strings.Contains(out, "403")
	})
	if out, ok := call("client-allow", health...); !ok {
		t.Errorf("client-allow GET /health after the DENY on POST /query: refused: %s", out)
	}

	// The destination sidecar counted the decisions by policy, and the
	// denied requests carry Envoy's RBAC flag.
	var alphaIP string
	for _, p := range m.pods("db") {
		if strings.HasPrefix(p.Name, "demo-graph-alpha-v2-") { // where client-allow's calls go
			alphaIP = p.IP
		}
	}
	resp, err := http.Get("http://" + alphaIP + ":15020/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`trellis_authz_decisions_total{action="DENY",policy="db/no-queries",result="denied"}`,
		`trellis_authz_decisions_total{action="ALLOW",policy="db/alpha-clients",result="allowed"}`,
		`trellis_authz_decisions_total{action="ALLOW",policy="-",result="denied"}`,
		`response_code="403"`, `response_flags="RBAC"`, `grpc_response_status="7"`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("alpha's sidecar metrics have no %s", want)
		}
	}
	if t.Failed() {
		fmt.Println(string(metrics))
	}

	// JWT: the control plane fetches the issuer's keys from its jwksUri
	// (served here, on the host's loopback) and pushes them; POST /query
	// then needs a valid token, while GET /health still needs none.
	m.must("delete", "-f", denyQuery)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Use: "sig"}}})
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(jwks) }))
	defer issuer.Close()
	apply(fmt.Sprintf(authzJWT, issuer.URL+"/keys"))
	token := func(exp time.Duration) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		payload, _ := json.Marshal(map[string]any{"iss": "https://issuer.trellis.test", "sub": "alice", "exp": time.Now().Add(exp).Unix()})
		jws, err := s.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := jws.CompactSerialize()
		return tok
	}
	curl := func(method, path, tok string) string {
		args := []string{"exec", "-n", "client-allow", "client", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3",
			"-X", method, "http://demo-graph-alpha.db.svc.cluster.local:8080" + path}
		if tok != "" {
			args = append(args, "-H", "Authorization: Bearer "+tok)
		}
		if method == "POST" {
			args = append(args, "-H", "Content-Type: application/json", "-d", `{"type":"Film"}`)
		}
		out, _, _ := m.run(args...)
		return out
	}
	waitFor(t, "POST /query without a token to be refused", 20*time.Second, func() bool { return curl("POST", "/query", "") == "403" })
	waitFor(t, "the issuer's keys to reach alpha's sidecar", 20*time.Second, func() bool { return curl("POST", "/query", token(time.Minute)) == "200" })
	if out := m.must("explain", "-n", "client-allow", "client", "http://demo-graph-alpha.db:8080/query", "-X", "POST",
		"-H", "Authorization: Bearer "+token(time.Minute)); !strings.Contains(out, "verified: request principal https://issuer.trellis.test/alice") ||
		!strings.Contains(out, "allowed by db/alpha-clients, rule 0") {
		t.Errorf("trellis explain with a token:\n%s\nwant it verified and allowed", out)
	}
	for _, c := range []struct{ what, method, path, tok, want string }{
		{"GET /health without a token", "GET", "/health", "", "200"},
		{"an expired token", "GET", "/health", token(-5 * time.Minute), "401"},
		{"not a token", "POST", "/query", "not-a-jwt", "401"},
	} {
		if got := curl(c.method, c.path, c.tok); got != c.want {
			t.Errorf("%s: %s %s answered %s, want %s", c.what, c.method, c.path, got, c.want)
		}
	}
}

// authzJWT makes tokens of an issuer, whose keys are at %s, verified for
// alpha, and POST /query need one.
const authzJWT = `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: issuer, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  jwtRules:
  - {issuer: "https://issuer.trellis.test", jwksUri: "%s"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: query-needs-token, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {methods: [POST], paths: [/query]}}]
`
