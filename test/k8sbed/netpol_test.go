package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestNetworkPolicyTruthTablesOnKubernetes runs the upstream NetworkPolicy
// truth tables on the bed with `trellis check network-policies`: the
// model's namespaces and pods created through the API, every step applied
// there, every pair of pods probed from inside the pods. First without
// Trellis's node agent, where the bed's CNI (the bridge plugin) enforces
// nothing, so a deny table must fail; then with it, where every table of
// every scenario must match.
func TestNetworkPolicyTruthTablesOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	trellis := buildTrellis(t, ctx, bed)
	install := func(agent string) {
		t.Helper()
		out, err := trellis("install", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never", "--set", "nodeAgent.enabled="+agent).CombinedOutput()
		if err != nil {
			t.Fatalf("trellis install (node agent %s): %v\n%s", agent, err, out)
		}
	}
	install("false")
	step("installed without the node agent")

	if out, err := bed.kubectl(ctx, "create", "namespace", "y"); err != nil {
		t.Fatal(out)
	}
	out, err := trellis("check", "network-policies").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "namespace y already exists") {
		t.Errorf("the check over the user's namespace y: %v\n%s\nwant a refusal naming it", err, out)
	}
	if out, err := bed.kubectl(ctx, "get", "namespace", "x"); err == nil {
		t.Errorf("the refused check created namespace x: %s", out)
	}
	if out, err := bed.kubectl(ctx, "delete", "namespace", "y", "--wait", "--timeout=60s"); err != nil {
		t.Fatal(out)
	}

	out, err = trellis("check", "network-policies", "--run", "^default-deny-ingress$", "--attempts", "2").CombinedOutput()
	t.Logf("without the node agent:\n%s", out)
	if err == nil || !regexp.MustCompile(`(?m)^× default-deny-ingress: \d+/288 cases match`).Match(out) ||
		!strings.Contains(string(out), "no Trellis node agent runs on node") {
		t.Errorf("without the node agent, the deny table passed or the check did not say why: %v", err)
	}
	step("without the node agent, nothing is enforced and the check says so")

	install("true")
	out, err = trellis("check", "network-policies").CombinedOutput()
	t.Logf("trellis check network-policies:\n%s", out)
	if err != nil {
		t.Errorf("the truth tables: %v", err)
	}
	m := regexp.MustCompile(`network policy conformance: (\d+)/(\d+) cases match over (\d+) scenarios`).FindSubmatch(out)
	if m == nil || string(m[1]) != string(m[2]) || string(m[2]) != "14112" || string(m[3]) != "40" {
		t.Errorf("the check's summary %q, want 14112/14112 cases over 40 scenarios", m)
	}
	step("the truth tables")

	for _, ns := range []string{"x", "y", "z"} {
		if out, err := bed.kubectl(ctx, "get", "namespace", ns); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("after the check, kubectl get namespace %s: %s", ns, out)
		}
	}
	if out, err := trellis("uninstall").CombinedOutput(); err != nil {
		t.Errorf("trellis uninstall: %v\n%s", err, out)
	}
	checkNoTrellis(t, ctx, bed)
}
