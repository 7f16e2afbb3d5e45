package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// healthOnly lets client-allow's principal GET /health on alpha, and
// nothing else.
const healthOnly = `apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: health-only, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/client-allow/sa/default]}}]
    to: [{operation: {methods: [GET], paths: [/health]}}]
`

// checkAuthorizationOnKubernetes applies an AuthorizationPolicy with
// kubectl to the walkthrough left running by the demo: the control plane
// reads the custom resource and alpha's sidecar enforces it (CheckVersion
// PERMISSION_DENIED, /health still served); the API server refuses what
// the CRD's schema excludes (action CUSTOM); deleting the policy lifts it.
func checkAuthorizationOnKubernetes(t *testing.T, ctx context.Context, bed *Bed, trellis func(args ...string) *exec.Cmd) {
	t.Helper()
	dir := t.TempDir()
	file := func(name, doc string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	call := func(args ...string) (string, error) {
		out, err := trellis(append([]string{"exec", "--kubernetes", "-n", "client-allow", "client", "--", "trellis", "example", "graph-client"},
			append(args, "--timeout", "3s")...)...).CombinedOutput()
		return string(out), err
	}
	policy := file("policy.yaml", healthOnly)
	if out, err := bed.kubectl(ctx, "apply", "-f", policy); err != nil {
		t.Fatal(err, out)
	}
	var out string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, err = call("check-version"); err != nil && strings.Contains(out, "PermissionDenied: RBAC: access denied") {
			break
		}
	}
	if err == nil || !strings.Contains(out, "PermissionDenied: RBAC: access denied") {
		t.Errorf("CheckVersion under the policy: %v\n%s\nwant PERMISSION_DENIED with RBAC: access denied", err, out)
	}
	if out, err := call("health"); err != nil {
		t.Errorf("GET /health, which the policy allows: %v\n%s", err, out)
	}
	custom := file("custom.yaml", strings.Replace(healthOnly, "  rules:", "  action: CUSTOM\n  rules:", 1))
	if out, err := bed.kubectl(ctx, "apply", "-f", custom); err == nil || !strings.Contains(out, "CUSTOM") {
		t.Errorf("kubectl apply of a CUSTOM policy: %v\n%s\nwant the API server to refuse it", err, out)
	}
	if out, err := bed.kubectl(ctx, "delete", "-f", policy); err != nil {
		t.Fatal(err, out)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, err = call("check-version"); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("CheckVersion after the policy was deleted: %v\n%s", err, out)
	}
}
