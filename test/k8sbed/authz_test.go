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

// noHealth denies GET /health on alpha to everyone, over the demo's
// alpha-readers, which allows it to client-allow.
const noHealth = `apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: no-health, namespace: db}
spec:
  selector: {matchLabels: {app: demo-graph-alpha}}
  action: DENY
  rules:
  - to: [{operation: {methods: [GET], paths: [/health]}}]
`

// checkAuthorizationOnKubernetes applies an AuthorizationPolicy with
// kubectl to the walkthrough left running by the demo (whose test 4 left
// alpha-readers in force): the control plane reads the custom resource
// and alpha's sidecar enforces it (the DENY on GET /health wins over the
// ALLOW; CheckVersion is still served); the API server refuses what the
// CRD's schema excludes (action CUSTOM); deleting the policy lifts it.
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
	policy := file("policy.yaml", noHealth)
	if out, err := bed.kubectl(ctx, "apply", "-f", policy); err != nil {
		t.Fatal(err, out)
	}
	var out string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, err = call("health"); err != nil && strings.Contains(out, "403 Forbidden: RBAC: access denied") {
			break
		}
	}
	if err == nil || !strings.Contains(out, "403 Forbidden: RBAC: access denied") {
		t.Errorf("GET /health under the DENY policy: %v\n%s\nwant 403 RBAC: access denied", err, out)
	}
	if out, err := call("check-version"); err != nil {
		t.Errorf("CheckVersion, which alpha-readers allows and no DENY names: %v\n%s", err, out)
	}
	custom := file("custom.yaml", strings.Replace(noHealth, "action: DENY", "action: CUSTOM", 1))
	if out, err := bed.kubectl(ctx, "apply", "-f", custom); err == nil || !strings.Contains(out, "CUSTOM") {
		t.Errorf("kubectl apply of a CUSTOM policy: %v\n%s\nwant the API server to refuse it", err, out)
	}
	if out, err := bed.kubectl(ctx, "delete", "-f", policy); err != nil {
		t.Fatal(err, out)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, err = call("health"); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("GET /health after the DENY was deleted: %v\n%s", err, out)
	}
}
