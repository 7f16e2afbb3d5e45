package main

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoOnKubernetes runs `trellis demo --kubernetes` on a fresh bed
// where Trellis is not installed. The demo installs it, applies
// examples/kubernetes, runs the walkthrough's tests 0–3 with its own
// checks, and removes everything it made. Its checks include the outside
// client timing out on both ports after the policy, the meshed client
// answered over mTLS under its SPIFFE ID, and the graph's HTTP and gRPC
// edges into the database, the database's edge to its coordinator and the
// denied edge, and test 4's AuthorizationPolicy (a custom resource)
// refusing the meshed client's query while allowing its CheckVersion. Before that, it must refuse to run over a namespace that is
// the user's.
func TestDemoOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	trellis := buildTrellis(t, ctx, bed)
	step("images loaded")
	demo := []string{"demo", "--kubernetes", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never"}

	if out, err := bed.kubectl(ctx, "create", "namespace", "db"); err != nil {
		t.Fatal(out)
	}
	out, err := trellis(demo...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "namespace db already exists") {
		t.Errorf("the demo over the user's namespace db: %v\n%s\nwant a refusal naming it", err, out)
	}
	if out, err := bed.kubectl(ctx, "get", "namespace", "trellis-system"); err == nil {
		t.Errorf("the refused demo installed Trellis anyway: %s", out)
	}
	if out, err := bed.kubectl(ctx, "delete", "namespace", "db", "--wait", "--timeout=60s"); err != nil {
		t.Fatal(out)
	}
	step("refused the user's namespace")

	out, err = trellis(demo...).CombinedOutput()
	t.Logf("trellis %s:\n%s", strings.Join(demo, " "), out)
	if err != nil {
		t.Fatalf("the demo failed: %v", err)
	}
	m := regexp.MustCompile(`all (\d+) checks passed`).FindSubmatch(out)
	if n, _ := strconv.Atoi(string(m2(m))); n < 19 {
		t.Errorf("the demo made %d checks, want all 19 of the walkthrough", n)
	}
	for _, want := range []string{
		`ok +client-deny → HTTP GET /health +timed out`,
		`ok +client-deny → gRPC CheckVersion +timed out`,
		`ok +client-allow → HTTP GET /health +healthy v\S+ from demo-graph-alpha-\S+; mTLS, caller spiffe://cluster.local/ns/client-allow/sa/default`,
		`ok +client-allow → gRPC CheckVersion +v\S+ from demo-graph-alpha-\S+; mTLS, caller spiffe://cluster.local/ns/client-allow/sa/default`,
		`ok +client-allow → alpha, routed +5 of 5 CheckVersion calls answered by v2 \(demo-graph-alpha-v2-\S+\)`,
		`ok +graph edge wl:client-allow/client>svc:db/demo-graph-alpha-v2:http `,
		`ok +graph edge wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc `,
		`ok +graph edge wl:db/demo-graph-alpha-v2>svc:db/demo-graph-zero:grpc `,
		`ok +graph edge wl:client-deny/client>wl:db/demo-graph-alpha-v[12]:ip denied`,
		`ok +graph edge svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route +100% for client-allow \(VirtualService client-allow/alpha-v2 rule 0\)`,
		`ok +graph edge svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v1:route +0% for client-allow \(VirtualService client-allow/alpha-v2 rule 0\)`,
		`ok +client-allow → HTTP POST /query +refused by alpha's sidecar: POST /query: 403 Forbidden: RBAC: access denied`,
		`ok +client-allow → gRPC CheckVersion +v\S+ from demo-graph-alpha-\S+; allowed by db/alpha-readers`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("the demo's output has no line matching %q", want)
		}
	}
	step("walkthrough passed")

	for _, ns := range []string{"db", "client-allow", "client-deny"} {
		if out, err := bed.kubectl(ctx, "get", "namespace", ns); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("after the demo, kubectl get namespace %s: %s", ns, out)
		}
	}
	checkNoTrellis(t, ctx, bed)
}

// m2 is a regexp match's first group, or nothing.
func m2(m [][]byte) []byte {
	if len(m) < 2 {
		return nil
	}
	return m[1]
}
