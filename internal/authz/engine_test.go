package authz

import (
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// policy reads a policy's spec from YAML, as a user writes it.
func policy(t *testing.T, ns, name, spec string) Policy {
	t.Helper()
	var s Spec
	if err := yaml.UnmarshalStrict([]byte(spec), &s); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return Policy{Namespace: ns, Name: name, Spec: s}
}

var db = Workload{Namespace: "db", Labels: map[string]string{"app": "graph"}, Services: []string{"graph-alpha"}}

// httpReq is a request from client-allow's default account over mTLS.
func httpReq() *Request {
	return &Request{HTTP: true, Principal: "cluster.local/ns/client-allow/sa/default", Namespace: "client-allow",
		SourceIP: netip.MustParseAddr("10.244.0.7"), DestIP: netip.MustParseAddr("10.244.0.9"), DestPort: 8080,
		Host: "graph-alpha.db.svc.cluster.local:8080", Method: "GET", Path: "/health",
		Header: func(name string) []string {
			if strings.EqualFold(name, "x-team") {
				return []string{"blue"}
			}
			return nil
		}}
}

func decide(t *testing.T, policies []Policy, r *Request) Decision {
	t.Helper()
	e, err := compileFor(policies, db)
	if err != nil {
		t.Fatal(err)
	}
	return e.Decide(r)
}

// compileFor is what the control plane and the proxy do between them:
// select the policies for w, then compile them.
func compileFor(policies []Policy, w Workload) (*Engine, error) {
	selected, err := Select(policies, w, []string{"trellis-system", "istio-system"})
	if err != nil {
		return nil, err
	}
	return Compile(selected)
}

// Each field against Istio's documented semantics: an ALLOW policy with
// the one rule given, and whether the request above is allowed.
func TestFields(t *testing.T) {
	for _, tc := range []struct {
		rule string
		want bool
	}{
		{`{from: [{source: {principals: ["cluster.local/ns/client-allow/sa/default"]}}]}`, true},
		{`{from: [{source: {principals: ["cluster.local/ns/client-allow/*"]}}]}`, true},
		{`{from: [{source: {principals: ["*/sa/default"]}}]}`, true},
		{`{from: [{source: {principals: ["*"]}}]}`, true},
		{`{from: [{source: {principals: ["cluster.local/ns/other/sa/default"]}}]}`, false},
		{`{from: [{source: {notPrincipals: ["cluster.local/ns/client-allow/sa/default"]}}]}`, false},
		{`{from: [{source: {namespaces: ["client-allow"]}}]}`, true},
		{`{from: [{source: {notNamespaces: ["client-allow"]}}]}`, false},
		{`{from: [{source: {ipBlocks: ["10.244.0.0/24"]}}]}`, true},
		{`{from: [{source: {ipBlocks: ["10.244.0.8"]}}]}`, false},
		{`{from: [{source: {notIpBlocks: ["10.244.0.7"]}}]}`, false},
		{`{from: [{source: {remoteIpBlocks: ["10.244.0.7/32"]}}]}`, true},
		{`{from: [{source: {requestPrincipals: ["*"]}}]}`, false},                                              // no token
		{`{from: [{source: {namespaces: ["client-allow"], principals: ["cluster.local/ns/x/sa/y"]}}]}`, false}, // fields ANDed
		{`{from: [{source: {namespaces: ["x"]}}, {source: {namespaces: ["client-allow"]}}]}`, true},            // sources ORed
		{`{to: [{operation: {hosts: ["graph-alpha.db.svc.cluster.local:8080"]}}]}`, true},
		{`{to: [{operation: {hosts: ["GRAPH-alpha.db*"]}}]}`, true},
		{`{to: [{operation: {notHosts: ["*:8080"]}}]}`, false},
		{`{to: [{operation: {ports: ["8080"]}}]}`, true},
		{`{to: [{operation: {notPorts: ["8080"]}}]}`, false},
		{`{to: [{operation: {methods: ["GET", "HEAD"]}}]}`, true},
		{`{to: [{operation: {methods: ["get"]}}]}`, false}, // methods are case-sensitive
		{`{to: [{operation: {notMethods: ["GET"]}}]}`, false},
		{`{to: [{operation: {paths: ["/health"]}}]}`, true},
		{`{to: [{operation: {paths: ["/he*"]}}]}`, true},
		{`{to: [{operation: {paths: ["*lth"]}}]}`, true},
		{`{to: [{operation: {paths: ["/{*}"]}}]}`, true},
		{`{to: [{operation: {paths: ["/{*}/x"]}}]}`, false},
		{`{to: [{operation: {paths: ["/{**}"]}}]}`, true},
		{`{to: [{operation: {notPaths: ["/health"]}}]}`, false},
		{`{when: [{key: "request.headers[X-Team]", values: ["blue"]}]}`, true},
		{`{when: [{key: "request.headers[x-team]", notValues: ["b*"]}]}`, false},
		{`{when: [{key: "request.headers[x-missing]", values: ["*"]}]}`, false},
		{`{when: [{key: "source.ip", values: ["10.244.0.0/16"]}]}`, true},
		{`{when: [{key: "source.namespace", values: ["client-allow"]}]}`, true},
		{`{when: [{key: "source.principal", notValues: ["*client-allow*"]}]}`, true}, // no infix match: "*client-allow*" is a suffix pattern
		{`{when: [{key: "destination.port", values: ["9080"]}]}`, false},
		{`{when: [{key: "destination.ip", values: ["10.244.0.9"]}]}`, true},
		{`{when: [{key: "request.auth.principal", values: ["*"]}]}`, false},
		{`{}`, true}, // an empty rule matches everything
	} {
		p := policy(t, "db", "p", "rules: ["+tc.rule+"]")
		if got := decide(t, []Policy{p}, httpReq()); got.Allowed != tc.want {
			t.Errorf("ALLOW %s: allowed %v, want %v", tc.rule, got.Allowed, tc.want)
		}
	}
}

// The decision names the rule that matched, for the access log and
// trellis explain.
func TestDecisionNamesTheRule(t *testing.T) {
	p := policy(t, "db", "two", `rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {paths: ["/health"]}}]}]`)
	if d := decide(t, []Policy{p}, httpReq()); !d.Allowed || d.Policy != "db/two" || d.Rule != 1 {
		t.Errorf("GET /health: %+v, want allowed by db/two rule 1", d)
	}
}

func TestEvaluationOrder(t *testing.T) {
	allowAll := policy(t, "db", "allow-all", `rules: [{}]`)
	denyGet := policy(t, "db", "deny-get", `{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}`)
	allowNothing := policy(t, "db", "allow-nothing", `{}`)
	auditAll := policy(t, "db", "audit", `{action: AUDIT, rules: [{}]}`)
	dryDeny := denyGet
	dryDeny.Name, dryDeny.DryRun = "dry-deny", true
	for _, tc := range []struct {
		name     string
		policies []Policy
		allowed  bool
		by       string
		action   Action
	}{
		{"no policy allows", nil, true, "", ""},
		{"DENY before ALLOW", []Policy{allowAll, denyGet}, false, "db/deny-get", Deny},
		{"an ALLOW policy with no rules allows nothing", []Policy{allowNothing}, false, "", Allow},
		{"one ALLOW match is enough", []Policy{allowNothing, allowAll}, true, "db/allow-all", Allow},
		{"AUDIT decides nothing", []Policy{auditAll}, true, "", ""},
		{"dry run decides nothing", []Policy{dryDeny}, true, "", ""},
	} {
		d := decide(t, tc.policies, httpReq())
		if d.Allowed != tc.allowed || d.Policy != tc.by || d.Action != tc.action {
			t.Errorf("%s: %+v, want allowed %v by %q (%s)", tc.name, d, tc.allowed, tc.by, tc.action)
		}
	}
	d := decide(t, []Policy{auditAll, dryDeny}, httpReq())
	if len(d.Audited) != 1 || d.Audited[0] != "db/audit" || d.DryRun == nil || d.DryRun.Allowed || d.DryRun.Policy != "db/dry-deny" {
		t.Errorf("reported %+v (dry run %+v), want the audit and the dry-run deny", d, d.DryRun)
	}
	// A dry-run ALLOW that nothing matches: enforced, it would deny.
	dryAllow := policy(t, "db", "dry-allow", `rules: [{from: [{source: {namespaces: [other]}}]}]`)
	dryAllow.DryRun = true
	if d := decide(t, []Policy{dryAllow}, httpReq()); !d.Allowed || d.DryRun == nil || d.DryRun.Allowed {
		t.Errorf("dry-run ALLOW matching nothing: %+v (dry run %+v), want allowed now and denied in the dry run", d, d.DryRun)
	}
	if d := decide(t, []Policy{allowAll}, httpReq()); d.DryRun != nil {
		t.Errorf("no dry-run policy, yet a dry-run decision: %+v", d.DryRun)
	}
}

// On a TCP connection a rule with an HTTP-only field matches nothing in
// an ALLOW policy (the rest of the policy still counts), and in a DENY
// policy it is applied without those fields, so it denies more: Istio's
// TCP semantics.
func TestTCPAndHTTPOnlyFields(t *testing.T) {
	tcp := httpReq()
	tcp.HTTP, tcp.Method, tcp.Path, tcp.Host = false, "", "", ""
	denyGet := policy(t, "db", "deny-get", `{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}`)
	if d := decide(t, []Policy{denyGet}, tcp); d.Allowed || d.Policy != "db/deny-get" {
		t.Errorf("a DENY rule on methods did not deny a TCP connection: %+v", d)
	}
	denyPort := policy(t, "db", "deny-port", `{action: DENY, rules: [{to: [{operation: {methods: [GET], ports: ["9000"]}}],
  when: [{key: "request.headers[x]", values: ["y"]}, {key: "source.namespace", values: [client-allow]}]}]}`)
	if d := decide(t, []Policy{denyPort}, tcp); !d.Allowed {
		t.Errorf("a DENY rule for port 9000 denied a connection to %d: %+v", tcp.DestPort, d)
	}
	tcp.DestPort = 9000
	if d := decide(t, []Policy{denyPort}, tcp); d.Allowed {
		t.Errorf("a DENY rule for port 9000 (and HTTP fields) did not deny a connection to it: %+v", d)
	}
	if d := decide(t, []Policy{denyPort}, httpReq()); !d.Allowed {
		t.Errorf("an HTTP request without the header was denied: %+v", d)
	}
	allowPath := policy(t, "db", "allow-path", `rules: [{to: [{operation: {paths: ["/x"]}}]}, {from: [{source: {namespaces: [client-allow]}}]}]`)
	if d := decide(t, []Policy{allowPath}, tcp); !d.Allowed {
		t.Errorf("the TCP-only rule of an ALLOW policy did not allow: %+v", d)
	}
	tcp.Namespace = "other"
	if d := decide(t, []Policy{allowPath}, tcp); d.Allowed {
		t.Errorf("an ALLOW rule on paths allowed a TCP connection: %+v", d)
	}
}

func TestScope(t *testing.T) {
	p := func(ns, spec string) Policy { return policy(t, ns, "p", spec) }
	deny := `action: DENY
rules: [{}]
`
	for _, tc := range []struct {
		name    string
		policy  Policy
		applies bool
	}{
		{"namespace-wide", p("db", deny), true},
		{"another namespace", p("other", deny), false},
		{"mesh-wide from the root namespace", p("trellis-system", deny), true},
		{"selector matches", p("db", deny+"selector: {matchLabels: {app: graph}}"), true},
		{"selector does not", p("db", deny+"selector: {matchLabels: {app: zero}}"), false},
		{"root namespace selector", p("trellis-system", deny+"selector: {matchLabels: {app: graph}}"), true},
		{"targetRefs its Service", p("db", deny+"targetRefs: [{kind: Service, group: \"\", name: graph-alpha}]"), true},
		{"targetRefs another Service", p("db", deny+"targetRefs: [{kind: Service, name: graph-zero}]"), false},
	} {
		d := decide(t, []Policy{tc.policy}, httpReq())
		if applied := !d.Allowed; applied != tc.applies {
			t.Errorf("%s: applied %v, want %v", tc.name, applied, tc.applies)
		}
	}
}

// What is refused, with the policy and the field named.
func TestRefused(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{`{action: CUSTOM, provider: {name: ext}}`, "CUSTOM (an external authorizer) is not supported"},
		{`{action: LOG}`, `action "LOG"`},
		{`rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]`, `rules[0]: from[0].source.ipBlocks: "10.0.0.0/33" is neither an address nor a CIDR`},
		{`rules: [{to: [{operation: {ports: ["http"]}}]}]`, `to[0].operation.ports: "http" is not a port number`},
		{`rules: [{to: [{operation: {paths: ["/a/{**}/{*}"]}}]}]`, `{**} must be the last operator`},
		{`rules: [{to: [{operation: {paths: ["/a*/{*}"]}}]}]`, `no * outside them`},
		{`rules: [{when: [{key: "request.time", values: ["x"]}]}]`, `key "request.time" is not supported`},
		{`rules: [{when: [{key: "request.headers", values: ["x"]}]}]`, `write request.headers[NAME]`},
		{`rules: [{when: [{key: "source.ip"}]}]`, `give values or notValues`},
		{`{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}`, "give one of them"},
		{`targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]`, "only a Service"},
	} {
		err := Check(policy(t, "db", "bad", tc.spec))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.spec, err, tc.want)
		}
		if _, err := compileFor([]Policy{policy(t, "db", "bad", tc.spec)}, db); err == nil || !strings.Contains(err.Error(), "AuthorizationPolicy db/bad") {
			t.Errorf("Compile %s: %v, want an error naming the policy", tc.spec, err)
		}
	}
}

func TestClaims(t *testing.T) {
	r := httpReq()
	r.Auth = &Auth{Principal: "https://issuer.example/alice", Audiences: []string{"graph"}, Presenter: "cli",
		Claims: map[string]any{"groups": []any{"admins", "dev"}, "org": map[string]any{"team": "blue"}, "level": float64(3)}}
	for _, tc := range []struct {
		when string
		want bool
	}{
		{`{key: "request.auth.claims[groups]", values: ["admins"]}`, true},
		{`{key: "request.auth.claims[org][team]", values: ["blue"]}`, true},
		{`{key: "request.auth.claims[level]", values: ["3"]}`, true},
		{`{key: "request.auth.claims[groups]", values: ["ops"]}`, false},
		{`{key: "request.auth.audiences", values: ["graph"]}`, true},
		{`{key: "request.auth.presenter", values: ["cli"]}`, true},
		{`{key: "request.auth.principal", values: ["https://issuer.example/*"]}`, true},
	} {
		p := policy(t, "db", "p", "rules: [{when: ["+tc.when+"]}]")
		if got := decide(t, []Policy{p}, r); got.Allowed != tc.want {
			t.Errorf("when %s: allowed %v, want %v", tc.when, got.Allowed, tc.want)
		}
	}
	src := policy(t, "db", "p", `rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/alice"]}}]}]`)
	if !decide(t, []Policy{src}, r).Allowed {
		t.Error("requestPrincipals did not match the token's iss/sub")
	}
}

// Any spec either is refused or compiles to an engine that decides
// without panicking.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{`rules: [{}]`, `{action: DENY, rules: [{to: [{operation: {paths: ["/{*}/x/{**}"]}}]}]}`,
		`rules: [{when: [{key: "request.auth.claims[a][b]", values: ["*"]}]}]`, `rules: [{from: [{source: {ipBlocks: ["::1/128"]}}]}]`} {
		f.Add(s, "/a/b", "GET")
	}
	f.Fuzz(func(t *testing.T, spec, path, method string) {
		var s Spec
		if yaml.Unmarshal([]byte(spec), &s) != nil {
			return
		}
		e, err := compileFor([]Policy{{Namespace: "db", Name: "f", Spec: s}}, db)
		if err != nil {
			return
		}
		r := httpReq()
		r.Path, r.Method = path, method
		e.Decide(r)
		r.HTTP, r.Auth = false, &Auth{Claims: map[string]any{"a": map[string]any{"b": []any{"x", 1.0}}}}
		e.Decide(r)
	})
}
