package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// gatewayAPIVersion is the Gateway API release whose standard CRDs the
// bed installs, from its Go module (the operator's step on a cluster).
const gatewayAPIVersion = "v1.6.3"

// routesManifest splits hello's traffic 3:1 with hello2 and sends /v2/
// to hello2 alone, rewritten to /; a second HTTPRoute, on hello3 (hello2's
// pods too), names a Service that does not exist; a VirtualService
// (Trellis's group) aborts /teapot to hello2 with 418; a DestinationRule
// limits hello2's requests.
const routesManifest = `apiVersion: v1
kind: Service
metadata: {name: hello2, namespace: mesh}
spec:
  selector: {app: hello2}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: hello3, namespace: mesh}
spec:
  selector: {app: hello2}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello-split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: hello2, port: 80}]
  - backendRefs: [{name: hello, port: 80, weight: 3}, {name: hello2, port: 80, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello-missing, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: hello3}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
---
apiVersion: networking.trellis.io/v1
kind: VirtualService
metadata: {name: hello2-faults, namespace: mesh}
spec:
  hosts: [hello2]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: hello2}}]
  - route: [{destination: {host: hello2}}]
---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: hello2-pool, namespace: mesh}
spec:
  host: hello2
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 100}}}
` + "---\n"

// checkRoutesOnKubernetes installs the Gateway API's CRDs after Trellis
// (the control plane must notice them without a restart), applies
// routesManifest, and checks that the control plane writes each route's
// status back, that the meshed client's sidecar splits, matches,
// rewrites and injects faults as the routes say, that `trellis get`
// shows it all from the cluster, and that deleting the routes ends the
// split.
func checkRoutesOnKubernetes(t *testing.T, ctx context.Context, bed *Bed, trellis func(args ...string) *exec.Cmd, meshClient string) {
	t.Helper()
	installGatewayAPI(t, ctx, bed)
	apply(t, ctx, bed, routesManifest+helloDeployment("mesh", "hello2", 1, ""))
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello2", "--timeout=120s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	defer func() {
		if out, err := bed.kubectl(context.Background(), "delete", "--ignore-not-found", "--wait=false", "-f", writeTemp(t, routesManifest+helloDeployment("mesh", "hello2", 1, ""))); err != nil {
			t.Errorf("removing the routes: %v\n%s", err, out)
		}
	}()

	// Status, written back by the control plane once it watches the
	// CRDs installed after it (within its 30 s rediscovery).
	condition := func(kind, name string, parent int, typ string) (status, reason, msg string) {
		out, _ := bed.kubectl(ctx, "-n", "mesh", "get", kind, name, "-o", "json")
		var o struct {
			Status struct {
				Parents []struct {
					ControllerName string
					Conditions     []struct{ Type, Status, Reason, Message string }
				}
			}
		}
		_ = json.Unmarshal([]byte(out), &o)
		if parent >= len(o.Status.Parents) || o.Status.Parents[parent].ControllerName != "trellis.io/mesh" {
			return "", "", out
		}
		for _, c := range o.Status.Parents[parent].Conditions {
			if c.Type == typ {
				return c.Status, c.Reason, c.Message
			}
		}
		return "", "", out
	}
	waitCondition := func(kind, name, typ, wantStatus, wantReason string) {
		t.Helper()
		var status, reason, msg string
		if err := waitFor(ctx, kind+" "+name+" "+typ, 90*time.Second, func() error {
			if status, reason, msg = condition(kind, name, 0, typ); status != wantStatus || reason != wantReason {
				return fmt.Errorf("%s %s: %s %q %q", kind, name, typ, status, reason)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v, want %s %s; last seen: %s", err, wantStatus, wantReason, msg)
		}
	}
	waitCondition("httproute", "hello-split", "Accepted", "True", "Accepted")
	waitCondition("httproute", "hello-split", "ResolvedRefs", "True", "ResolvedRefs")
	waitCondition("httproute", "hello-missing", "ResolvedRefs", "False", "BackendNotFound")
	waitCondition("virtualservices.networking.trellis.io", "hello2-faults", "Accepted", "True", "Accepted")

	// The split, as the client's sidecar applies it (its config may
	// arrive a moment after the status is written).
	count := func(lines []string) (hello, hello2, other int) {
		for _, l := range lines {
			switch {
			case regexp.MustCompile(`^200 hello from hello-[a-z0-9]+-[a-z0-9]+ `).MatchString(l):
				hello++
			case regexp.MustCompile(`^200 hello from hello2-`).MatchString(l):
				hello2++
			default:
				other++
			}
		}
		return
	}
	if err := waitFor(ctx, "the split in the client's sidecar", 30*time.Second, func() error {
		if _, h2, _ := count(fetch(t, meshClient, helloURL, 20, "http1")); h2 == 0 {
			return fmt.Errorf("no request of 20 reached hello2")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	hello, hello2, other := count(fetch(t, meshClient, helloURL, 400, "http1"))
	if share := float64(hello2) / 400; other > 0 || share < 0.17 || share > 0.33 {
		t.Errorf("a 3:1 split over 400 requests: %d to hello, %d to hello2 (%.0f%%), %d otherwise; want 25%% ± 8 to hello2, none failing",
			hello, hello2, 100*share, other)
	}
	if hello, hello2, other := count(fetch(t, meshClient, strings.TrimSuffix(helloURL, "/")+"/v2/who", 20, "h2c")); hello2 != 20 {
		t.Errorf("/v2/ over h2c: %d to hello2, %d to hello, %d otherwise; want all to hello2", hello2, hello, other)
	}
	for _, l := range fetch(t, meshClient, "http://hello2.mesh.svc.cluster.local/teapot", 5, "http1") {
		if !strings.HasPrefix(l, "418") {
			t.Errorf("/teapot to hello2, which its VirtualService aborts with 418: %q", l)
		}
	}
	if _, h2, other := count(fetch(t, meshClient, "http://hello2.mesh.svc.cluster.local/", 5, "http1")); h2 != 5 {
		t.Errorf("/ to hello2: %d answered by hello2, %d otherwise; want all", h2, other)
	}

	// trellis get reads the same from the cluster.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"httproutes"}, []string{"hello-split", "hello-missing", "BackendNotFound"}},
		{[]string{"virtualservices"}, []string{"hello2-faults", "hello2"}},
		{[]string{"destinationrules"}, []string{"hello2-pool", "hello2"}},
	} {
		args := append([]string{"get"}, c.args...)
		args = append(args, "--kubernetes", "-n", "mesh")
		out, err := trellis(args...).CombinedOutput()
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				err = fmt.Errorf("%v; %q missing", err, w)
			}
		}
		if err != nil {
			t.Errorf("trellis %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// Deleting the split sends every request to hello again.
	if out, err := bed.kubectl(ctx, "-n", "mesh", "delete", "httproute", "hello-split"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := waitFor(ctx, "the split withdrawn", 30*time.Second, func() error {
		if _, h2, other := count(fetch(t, meshClient, helloURL, 40, "http1")); h2+other > 0 {
			return fmt.Errorf("%d of 40 requests still reached hello2, %d failed", h2, other)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// installGatewayAPI installs the Gateway API's standard CRDs of HTTPRoute
// and GRPCRoute (gatewayAPIVersion) server-side, as an operator would, and
// waits until the API server serves them.
func installGatewayAPI(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	resources := []string{"httproutes", "grpcroutes"}
	for _, crd := range gatewayAPICRDs(t, ctx, resources...) {
		if out, err := bed.kubectl(ctx, "apply", "--server-side", "-f", crd); err != nil {
			t.Fatalf("installing the Gateway API's CRDs: %v\n%s", err, out)
		}
	}
	for _, r := range resources {
		if out, err := bed.kubectl(ctx, "wait", "--for=condition=Established", "--timeout=30s", "crd/"+r+".gateway.networking.k8s.io"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
}

// gatewayAPICRDs are the files of the standard channel's CRDs of the
// given resources, from the Gateway API's Go module (downloaded into the
// module cache).
func gatewayAPICRDs(t *testing.T, ctx context.Context, resources ...string) []string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", "sigs.k8s.io/gateway-api@"+gatewayAPIVersion).Output()
	if err != nil {
		t.Fatalf("go mod download sigs.k8s.io/gateway-api@%s: %v\n%s", gatewayAPIVersion, err, out)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	var files []string
	for _, r := range resources {
		files = append(files, filepath.Join(mod.Dir, "config", "crd", "standard", "gateway.networking.k8s.io_"+r+".yaml"))
	}
	return files
}

// writeTemp writes doc to a file of the test's and returns its path.
func writeTemp(t *testing.T, doc string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(doc); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
