package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMeshOnKubernetes installs Trellis on a fresh bed with `trellis
// install`, meshes a namespace, and checks what a user of the mesh relies
// on: pods come up with the native sidecar first; a client's requests over
// one connection are balanced across the three replicas of a service
// (HTTP/1.1 and h2c) over mTLS (the servers' metrics say so);
// under the default PERMISSIVE a pod outside the mesh is served, under
// STRICT it is refused while the meshed client still is; `trellis
// uninstall` leaves nothing of Trellis while the meshed pods keep running.
func TestMeshOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	start := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }
	loadHello(t, ctx, bed)
	trellis := buildTrellis(t, ctx, bed)
	step("images loaded")

	install := trellis("install", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never")
	if out, err := install.CombinedOutput(); err != nil {
		logs, _ := bed.kubectl(ctx, "-n", "trellis-system", "logs", "deploy/trellis-control", "--tail=50")
		t.Fatalf("trellis install: %v\n%s\ncontrol plane logs:\n%s", err, out, logs)
	}
	step("installed")
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := bed.kubectl(context.Background(), "-n", "trellis-system", "logs", "deploy/trellis-control", "--tail=80")
			t.Logf("control plane logs:\n%s", logs)
		}
	})

	// The CA's attestation against this API server's real tokens (the
	// test lives beside the code, in the main module).
	attest := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^TestTokenAttestor$", "./internal/kube")
	attest.Dir = "../.."
	attest.Env = append(os.Environ(), "TRELLIS_TEST_KUBECONFIG="+bed.Kubeconfig())
	if out, err := attest.CombinedOutput(); err != nil {
		t.Errorf("TestTokenAttestor on the bed: %v\n%s", err, out)
	}
	step("token attestation checked")

	apply(t, ctx, bed, meshManifest)
	for _, d := range []string{"mesh/hello", "mesh/client", "outside/client"} {
		ns, name, _ := strings.Cut(d, "/")
		if out, err := bed.kubectl(ctx, "-n", ns, "rollout", "status", "deployment/"+name, "--timeout=180s"); err != nil {
			desc, _ := bed.kubectl(ctx, "-n", ns, "describe", "pods", "-l", "app="+name)
			t.Fatalf("%v\n%s\n%s", err, out, desc)
		}
	}
	step("workloads ready")

	inits, _ := bed.kubectl(ctx, "-n", "mesh", "get", "pods", "-l", "app=hello", "-o", "jsonpath={range .items[*]}{.spec.initContainers[*].name};{end}")
	if want := strings.Repeat("trellis-init trellis-proxy;", 3); inits != want {
		t.Errorf("init containers of the hello pods = %q, want %q (redirect step, then the sidecar)", inits, want)
	}
	outsideInits, _ := bed.kubectl(ctx, "-n", "outside", "get", "pods", "-o", "jsonpath={.items[*].spec.initContainers}")
	if outsideInits != "" {
		t.Errorf("a pod of an unlabelled namespace was injected: %s", outsideInits)
	}
	meshClient := podIP(t, ctx, bed, "mesh", "app=client")
	outsideClient := podIP(t, ctx, bed, "outside", "app=client")
	helloURL := "http://hello.mesh.svc.cluster.local/"

	for _, proto := range []string{"http1", "h2c"} {
		lines := fetch(t, meshClient, helloURL, 30, proto)
		seen := map[string]int{}
		for _, l := range lines {
			if m := regexp.MustCompile(`^200 hello from (hello-\S+)`).FindStringSubmatch(l); m != nil {
				seen[m[1]]++
			} else {
				t.Errorf("%s: a response through the mesh was %q", proto, l)
			}
		}
		if len(seen) != 3 {
			t.Errorf("%s: 30 requests over one connection reached %d replicas (%v), want all 3", proto, len(seen), seen)
		}
	}
	helloPod := podIP(t, ctx, bed, "mesh", "app=hello")
	metrics := get(t, "http://"+net.JoinHostPort(helloPod, "15020")+"/stats/prometheus")
	if !regexp.MustCompile(`istio_requests_total\{[^}]*connection_security_policy="mutual_tls"[^}]*source_workload="client"`).MatchString(metrics) {
		t.Errorf("the server's sidecar counted no mTLS request from the client; its metrics:\n%s", grepLines(metrics, "istio_requests_total"))
	}
	step("balanced over mTLS")

	// PERMISSIVE (no policy): a client outside the mesh is served.
	if lines := fetch(t, outsideClient, helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("under PERMISSIVE, the unmeshed client got %q, want the greeting", lines)
	}
	apply(t, ctx, bed, `apiVersion: security.trellis.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh}
spec: {mtls: {mode: STRICT}}
`)
	if err := waitFor(ctx, "STRICT to refuse the unmeshed client", 30*time.Second, func() error {
		if lines := fetch(t, outsideClient, helloURL, 1, "http1"); allPrefixed(lines, "200") {
			return fmt.Errorf("still served: %q", lines)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if lines := fetch(t, meshClient, helloURL, 10, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("under STRICT, the meshed client got %q, want the greeting", lines)
	}
	step("STRICT refuses the outsider, serves the mesh")

	// `trellis inject` offline (the roots read from the cluster): the
	// injected Deployment, applied to an unlabelled namespace, is meshed.
	inject := trellis("inject", "-f", "-", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never")
	inject.Stdin = strings.NewReader(gitopsManifest)
	injected, err := inject.Output()
	if err != nil {
		t.Fatalf("trellis inject: %v", err)
	}
	apply(t, ctx, bed, "apiVersion: v1\nkind: Namespace\nmetadata: {name: gitops}\n---\n"+string(injected))
	if out, err := bed.kubectl(ctx, "-n", "gitops", "rollout", "status", "deployment/client", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	if lines := fetch(t, podIP(t, ctx, bed, "gitops", "app=client"), helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("under STRICT, the client injected by trellis inject got %q, want the greeting", lines)
	}
	step("trellis inject meshes a manifest offline")

	uninstall := trellis("uninstall")
	if out, err := uninstall.CombinedOutput(); err != nil {
		t.Fatalf("trellis uninstall: %v\n%s", err, out)
	}
	for _, check := range [][]string{
		{"get", "namespace", "trellis-system"},
		{"get", "crd", "peerauthentications.security.trellis.io"},
		{"get", "mutatingwebhookconfiguration", "trellis-sidecar-injector"},
		{"get", "clusterrole", "trellis-control"},
		{"get", "clusterrolebinding", "trellis-control"},
	} {
		if out, err := bed.kubectl(ctx, check...); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("after uninstall, kubectl %s: %s", strings.Join(check, " "), out)
		}
	}
	if left, _ := bed.kubectl(ctx, "get", "all,sa,role,rolebinding,secret,configmap", "-A", "-l", "app.kubernetes.io/part-of=trellis", "-o", "name"); strings.TrimSpace(left) != "" {
		t.Errorf("after uninstall, objects of Trellis are left:\n%s", left)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "get", "deployment", "hello", "-o", "jsonpath={.status.readyReplicas}"); err != nil || out != "3" {
		t.Errorf("after uninstall, the meshed deployment has %q ready replicas (%v), want 3 still running", out, err)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "restart", "deployment/hello"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	// The old pods take their grace period to go.
	if err := waitFor(ctx, "the restarted pods", time.Minute, func() error {
		out, err := bed.kubectl(ctx, "-n", "mesh", "get", "pods", "-l", "app=hello", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.initContainers[*].name};{end}")
		if err == nil && (strings.Count(out, ";") != 3 || strings.Contains(out, "trellis")) {
			err = fmt.Errorf("want 3 pods without a sidecar: %s", out)
		}
		return err
	}); err != nil {
		t.Errorf("after uninstall: %v", err)
	}
	step("uninstalled")
}

// startBed brings a bed up in a temporary directory and takes it down
// when the test ends.
func startBed(t *testing.T, ctx context.Context) *Bed {
	t.Helper()
	bed := &Bed{cfg: Config{
		Dir:    filepath.Join(t.TempDir(), "bed"),
		Cache:  envOr("K8SBED_CACHE", "/var/cache/trellis-k8sbed"),
		Source: ".",
	}}
	t.Cleanup(func() {
		if err := bed.Down(context.Background()); err != nil {
			t.Errorf("Down() = %v", err)
		}
	})
	if err := bed.Up(ctx); err != nil {
		t.Fatalf("Up() = %v", err)
	}
	return bed
}

// loadHello builds the test workload and loads it as
// trellis.local/test/hello:1.
func loadHello(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	hello := filepath.Join(t.TempDir(), "hello")
	build := exec.CommandContext(ctx, "go", "build", "-o", hello, "./testdata/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	if err := bed.LoadImage(ctx, "trellis.local/test/hello:1", hello, nil); err != nil {
		t.Fatal(err)
	}
}

// buildTrellis builds the trellis CLI of this checkout, loads Trellis's
// images (tag bedtest) into the bed, and returns a maker of CLI commands
// aimed at the bed.
func buildTrellis(t *testing.T, ctx context.Context, bed *Bed) func(args ...string) *exec.Cmd {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "trellis")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/trellis")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	images := exec.CommandContext(ctx, bin, "images", "build", "--tag", "bedtest", "--out", t.TempDir(), "--load-into-k8sbed")
	images.Dir = "../.."
	images.Env = append(os.Environ(), "K8SBED_DIR="+bed.cfg.Dir)
	if out, err := images.CombinedOutput(); err != nil {
		t.Fatalf("trellis images build --load-into-k8sbed: %v\n%s", err, out)
	}
	return func(args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+bed.Kubeconfig())
		return cmd
	}
}

// apply applies a manifest, retrying while a fresh namespace's default
// ServiceAccount is not there yet.
func apply(t *testing.T, ctx context.Context, bed *Bed, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "apply", 30*time.Second, func() error {
		_, err := bed.kubectl(ctx, "apply", "-f", f)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func podIP(t *testing.T, ctx context.Context, bed *Bed, ns, selector string) string {
	t.Helper()
	ip, err := bed.kubectl(ctx, "-n", ns, "get", "pods", "-l", selector, "--field-selector=status.phase=Running", "-o", "jsonpath={.items[0].status.podIP}")
	if err != nil || ip == "" {
		t.Fatalf("no running pod %s in %s: %v", selector, ns, err)
	}
	return ip
}

// fetch has the hello pod at podIP fetch url n times over one connection
// and returns its lines, checking that it used one connection.
func fetch(t *testing.T, podIP, url string, n int, proto string) []string {
	t.Helper()
	body := get(t, fmt.Sprintf("http://%s:8080/fetch?n=%d&proto=%s&url=%s", podIP, n, proto, url))
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "connections: ") {
		t.Fatalf("fetch through %s: %q", podIP, body)
	}
	if lines[0] != "connections: 1" && allPrefixed(lines[1:], "200") {
		t.Errorf("fetch through %s used %s, want one", podIP, lines[0])
	}
	return lines[1:]
}

func allPrefixed(lines []string, prefix string) bool {
	for _, l := range lines {
		if !strings.HasPrefix(l, prefix) {
			return false
		}
	}
	return len(lines) > 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

const meshManifest = `apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: mesh}
spec:
  replicas: 3
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: hello
        image: trellis.local/test/hello:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: mesh}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: mesh}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    # The test drives the client from the host, outside the mesh: its
    # port 8080 is left out of the inbound capture (its outbound is not).
    metadata: {labels: {app: client}, annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "8080"}}
    spec:
      containers:
      - name: client
        image: trellis.local/test/hello:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: outside}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: client
        image: trellis.local/test/hello:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 8080}]
`

// gitopsManifest is the client as a GitOps repository holds it, before
// `trellis inject`.
const gitopsManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: gitops}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}, annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "8080"}}
    spec:
      containers:
      - name: client
        image: trellis.local/test/hello:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 8080}]
`
