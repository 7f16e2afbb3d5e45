package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMeshOnKubernetes installs Trellis (two control plane replicas) on a
// fresh bed with `trellis install`, meshes a namespace, and checks what a
// user of the mesh relies on, step by step (docs/kubernetes.md lists
// them): injection, per-request balancing over one connection (HTTP/1.1,
// h2c, gRPC) over mTLS with no plaintext on the wire, scaling, root
// rotation and control plane replacement under load without a failed
// request, PERMISSIVE and
// STRICT, excluded ports, `trellis inject`, `trellis check`,
// `trellis restart-injected` and `trellis uninstall`.
func TestMeshOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	loadHello(t, ctx, bed)
	trellis := buildTrellis(t, ctx, bed)
	step("images loaded")

	if out, err := trellis("check", "--pre").CombinedOutput(); err != nil {
		t.Fatalf("trellis check --pre: %v\n%s", err, out)
	}
	installTrellis(t, ctx, bed, trellis, "--set", "controlPlane.replicas=2")
	step("installed")
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := bed.kubectl(context.Background(), "-n", "trellis-system", "logs", "deploy/trellis-control", "--tail=80")
			t.Logf("control plane logs:\n%s", logs)
			// What the mesh's pods were doing.
			for _, args := range [][]string{
				{"-n", "mesh", "get", "pods", "-o", "wide"},
				{"-n", "mesh", "get", "events", "--sort-by=.lastTimestamp"},
				{"-n", "mesh", "logs", "-l", "app=hello", "-c", "trellis-proxy", "--prefix", "--tail=25"},
			} {
				out, _ := bed.kubectl(context.Background(), args...)
				t.Logf("kubectl %s:\n%.6000s", strings.Join(args, " "), out)
			}
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

	for _, proto := range []string{"http1", "h2c", "grpc"} {
		url := helloURL
		if proto == "grpc" {
			url = "hello.mesh.svc.cluster.local:9090"
		}
		lines := fetch(t, meshClient, url, 30, proto)
		seen := map[string]int{}
		for _, l := range lines {
			if m := regexp.MustCompile(`^(?:200|OK) hello from (hello-\S+)`).FindStringSubmatch(l); m != nil {
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
	// The redirect step captured the client app's own traffic to the
	// ClusterIP: its sidecar reported the requests as their source.
	clientMetrics := get(t, "http://"+net.JoinHostPort(meshClient, "15020")+"/stats/prometheus")
	if !regexp.MustCompile(`istio_requests_total\{[^}]*destination_service="hello.mesh.svc.cluster.local"[^}]*reporter="source"`).MatchString(clientMetrics) {
		t.Errorf("the client's sidecar reported no request of its app to hello; its metrics:\n%s", grepLines(clientMetrics, "istio_requests_total"))
	}
	step("balanced over mTLS")

	// The wire between the pods: a capture on every link of the node sees
	// the greeting in plaintext when the unmeshed client asks
	// (PERMISSIVE), and never when the meshed one does.
	outsideClient := podIP(t, ctx, bed, "outside", "app=client")
	if wire := capture(t, ctx, func() { fetch(t, outsideClient, helloURL, 3, "http1") }); !strings.Contains(wire, "hello from") {
		t.Errorf("the capture saw no plaintext greeting of the unmeshed client's requests: it does not see the pods' links")
	}
	if wire := capture(t, ctx, func() {
		fetch(t, meshClient, helloURL, 10, "http1")
		fetch(t, meshClient, "hello.mesh.svc.cluster.local:9090", 10, "grpc")
	}); strings.Contains(wire, "hello from") {
		t.Errorf("plaintext between meshed pods:\n%s", grepLines(wire, "hello from"))
	}
	step("no plaintext on the wire")

	checkClusterGraph(t, ctx, trellis)
	step("the graph through the API server: trellis graph and dashboard --kubernetes")

	checkRoutesOnKubernetes(t, ctx, bed, trellis, meshClient)
	step("routes and VirtualServices applied, their status written back")

	// Scaling under load: 200 requests a second from the meshed client
	// while the server goes 3 -> 5 -> 1 replicas; not one may fail.
	loadDone := startLoad(meshClient, helloURL, 200, 30)
	for _, n := range []string{"5", "1"} {
		if out, err := bed.kubectl(ctx, "-n", "mesh", "scale", "deployment/hello", "--replicas="+n); err != nil {
			t.Fatal(err, out)
		}
		if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello", "--timeout=120s"); err != nil {
			t.Fatal(err, out)
		}
		time.Sleep(5 * time.Second)
	}
	if got := <-loadDone; !onlyOK(got) {
		t.Errorf("scaling 3 -> 5 -> 1 under load: outcomes\n%s", got)
	} else {
		t.Logf("scaling 3 -> 5 -> 1 under load: %s", strings.ReplaceAll(got, "\n", "; "))
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "scale", "deployment/hello", "--replicas=3"); err != nil {
		t.Fatal(err, out)
	}
	step("scaled under load")

	// The root rotated under load, in its three phases, across both
	// control plane replicas: not one request fails, and every sidecar
	// ends with a certificate of the new root.
	loadDone = startLoad(meshClient, helloURL, 100, 45)
	if out, err := trellis("ca", "rotate", "--kubernetes", "--timeout", "90s").CombinedOutput(); err != nil || !strings.Contains(string(out), "root rotated") {
		logs, _ := bed.kubectl(ctx, "-n", "trellis-system", "logs", "-l", "app=trellis-control", "--tail=30")
		t.Errorf("trellis ca rotate --kubernetes: %v\n%s\ncontrol plane:\n%s", err, out, logs)
	}
	if got := <-loadDone; !onlyOK(got) {
		t.Errorf("root rotation under load: outcomes\n%s", got)
	}
	step("root rotated under load")

	// The control plane's pod deleted under load: the sidecars keep
	// serving their last config, and reconnect to its successor.
	loadDone = startLoad(meshClient, helloURL, 200, 20)
	time.Sleep(3 * time.Second)
	if out, err := bed.kubectl(ctx, "-n", "trellis-system", "delete", "pod", "-l", "app=trellis-control", "--wait=false"); err != nil {
		t.Fatal(err, out)
	}
	if got := <-loadDone; !onlyOK(got) {
		t.Errorf("control plane deleted under load: outcomes\n%s", got)
	}
	if out, err := bed.kubectl(ctx, "-n", "trellis-system", "rollout", "status", "deployment/trellis-control", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	step("control plane replaced under load")

	// The control plane away for a minute (scaled to zero, as an
	// operator or an outage would) under 500 requests a second: the
	// sidecars serve on their last config and certificates.
	loadDone = startLoad(meshClient, helloURL, 500, 75)
	time.Sleep(3 * time.Second)
	if out, err := bed.kubectl(ctx, "-n", "trellis-system", "scale", "deployment/trellis-control", "--replicas=0"); err != nil {
		t.Fatal(err, out)
	}
	time.Sleep(60 * time.Second)
	if out, err := bed.kubectl(ctx, "-n", "trellis-system", "scale", "deployment/trellis-control", "--replicas=2"); err != nil {
		t.Fatal(err, out)
	}
	if got := <-loadDone; !onlyOK(got) {
		t.Errorf("control plane down for 60s under 500 rps: outcomes\n%s", got)
	} else {
		t.Logf("control plane down for 60s under 500 rps: %s", strings.ReplaceAll(got, "\n", "; "))
	}
	if out, err := bed.kubectl(ctx, "-n", "trellis-system", "rollout", "status", "deployment/trellis-control", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	step("control plane down for a minute under load")

	checkUpgrade(t, ctx, bed, trellis, meshClient)
	step("upgraded under load, to certificates of 20s")

	checkShortCertificates(t, ctx, trellis, meshClient)
	step("certificates of 20s renewed for 2 minutes under load")

	// PERMISSIVE (no policy): a client outside the mesh is served.
	if lines := fetch(t, outsideClient, helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("under PERMISSIVE, the unmeshed client got %q, want the greeting", lines)
	}
	checkNetworkPolicy(t, ctx, bed, meshClient, outsideClient)
	step("NetworkPolicy enforced by the node agent")
	checkPolicyPortsWithSidecars(t, ctx, bed, meshClient)
	step("a port rule holds for meshed traffic")
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
	gitopsClient := podIP(t, ctx, bed, "gitops", "app=client")
	if lines := fetch(t, gitopsClient, helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("under STRICT, the client injected by trellis inject got %q, want the greeting", lines)
	}
	// Its port 9090 is excluded from the outbound capture: gRPC leaves
	// without its sidecar, in plaintext, and STRICT refuses it.
	if lines := fetch(t, gitopsClient, "hello.mesh.svc.cluster.local:9090", 1, "grpc"); allPrefixed(lines, "OK") {
		t.Errorf("gRPC on an excluded outbound port was served under STRICT (%q): it went through the sidecar", lines)
	}
	step("trellis inject meshes a manifest offline")

	// A namespace labelled after its pods started: check names them,
	// restart-injected rolls them, and then every sidecar is connected
	// and synced.
	if _, err := bed.kubectl(ctx, "label", "namespace", "outside", "trellis.io/inject=enabled"); err != nil {
		t.Fatal(err)
	}
	out, err := trellis("check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "‼ pods of outside without a sidecar: client-") {
		t.Errorf("trellis check with a pod created before injection: %v, want it named\n%s", err, out)
	}
	if out, err := trellis("restart-injected", "-n", "outside").CombinedOutput(); err != nil || !strings.Contains(string(out), "restarted outside/Deployment/client") {
		t.Errorf("trellis restart-injected: %v\n%s", err, out)
	}
	if out, err := bed.kubectl(ctx, "-n", "outside", "rollout", "status", "deployment/client", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	if err := waitFor(ctx, "trellis check", time.Minute, func() error {
		out, err := trellis("check").CombinedOutput()
		if err == nil && (strings.Contains(string(out), "‼") || !strings.Contains(string(out), "√ sidecars connected and synced: 6 injected pod(s)")) {
			err = fmt.Errorf("not all √")
		}
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// proxy-status: the six sidecars, each SYNCED with the replica it
	// streams from.
	if out, err := trellis("proxy-status", "--kubernetes").CombinedOutput(); err != nil || strings.Count(string(out), " SYNCED ") != 6 ||
		!regexp.MustCompile(`(?m)^outside\s+client-\S+\s+true\s+SYNCED\s`).Match(out) {
		t.Errorf("trellis proxy-status --kubernetes: %v\n%s\nwant the 6 sidecars SYNCED", err, out)
	}
	// proxy-config and logs of a cluster pod: the client's sidecar knows
	// hello's three endpoints with their identity, and logs its requests.
	clientPod, _ := bed.kubectl(ctx, "-n", "mesh", "get", "pods", "-l", "app=client", "--field-selector=status.phase=Running", "-o", "jsonpath={.items[0].metadata.name}")
	if out, err := trellis("proxy-config", "-n", "mesh", clientPod, "endpoints", "--kubernetes").CombinedOutput(); err != nil ||
		len(regexp.MustCompile(`(?m)^\S+:8080\s+hello\.mesh:80\s+spiffe://cluster\.local/ns/mesh/sa/default$`).FindAll(out, -1)) != 3 {
		t.Errorf("trellis proxy-config -n mesh %s endpoints --kubernetes: %v\n%s\nwant hello's 3 endpoints and their identity", clientPod, err, out)
	}
	// (The log is the sidecar's access log by now, rotated by the kubelet
	// past its first lines.)
	if out, err := trellis("logs", "-n", "mesh", clientPod, "-c", "trellis-proxy", "--kubernetes").CombinedOutput(); err != nil ||
		!regexp.MustCompile(`"msg":"access","reporter":"source".*"source":"mesh/client","destination":"mesh/hello"`).Match(out) {
		t.Errorf("trellis logs -n mesh %s -c trellis-proxy --kubernetes: %v\n%.2000s", clientPod, err, out)
	}
	step("trellis check, restart-injected, proxy-status, proxy-config, logs")

	// exportTo: a Service exported only to its own namespace is unknown
	// to the (now meshed) sidecars of others, whose calls then leave
	// without mTLS and are refused under STRICT; exported again, it is
	// served.
	outsideClient = podIP(t, ctx, bed, "outside", "app=client")
	for _, c := range []struct{ annotation, want string }{{"networking.istio.io/exportTo=.", "refused"}, {"networking.istio.io/exportTo-", "served"}} {
		if out, err := bed.kubectl(ctx, "-n", "mesh", "annotate", "service", "hello", c.annotation); err != nil {
			t.Fatal(err, out)
		}
		if err := waitFor(ctx, "the outside client to be "+c.want, 30*time.Second, func() error {
			if served := allPrefixed(fetch(t, outsideClient, helloURL, 1, "http1"), "200 hello from"); served != (c.want == "served") {
				return fmt.Errorf("served: %v", served)
			}
			return nil
		}); err != nil {
			t.Errorf("with %s: %v", c.annotation, err)
		}
		if lines := fetch(t, meshClient, helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
			t.Errorf("with %s, the client of the service's own namespace got %q", c.annotation, lines)
		}
	}
	step("exportTo")

	// A Service without a selector reaches what its EndpointSlice lists:
	// here one server pod, over mTLS (STRICT is in force), the pod known
	// by its address.
	listed, err := bed.kubectl(ctx, "-n", "mesh", "get", "pods", "-l", "app=hello", "--field-selector=status.phase=Running",
		"-o", "jsonpath={.items[0].metadata.name} {.items[0].status.podIP}")
	name, ip, ok := strings.Cut(listed, " ")
	if err != nil || !ok {
		t.Fatalf("a server pod: %v %q", err, listed)
	}
	apply(t, ctx, bed, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: hello-listed, namespace: mesh}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hello-listed-1, namespace: mesh, labels: {kubernetes.io/service-name: hello-listed}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [%q]}]
`, ip))
	if err := waitFor(ctx, "the Service without a selector to be served", 30*time.Second, func() error {
		if lines := fetch(t, meshClient, "http://hello-listed.mesh.svc.cluster.local/", 3, "http1"); !allPrefixed(lines, "200 hello from "+name) {
			return fmt.Errorf("got %q, want the greeting of %s", lines, name)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	step("a Service without a selector, by its EndpointSlice")

	uninstall := trellis("uninstall")
	if out, err := uninstall.CombinedOutput(); err != nil {
		t.Fatalf("trellis uninstall: %v\n%s", err, out)
	}
	checkNoTrellis(t, ctx, bed)
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

// helloURL is the meshed server's Service.
const helloURL = "http://hello.mesh.svc.cluster.local/"

// meshOnlyPolicy lets only the pods of meshed namespaces reach the
// server: the walkthrough's policy.
const meshOnlyPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: mesh-members-only, namespace: mesh}
spec:
  podSelector: {matchLabels: {app: hello}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {trellis.io/inject: enabled}}}]
`

// checkNetworkPolicy: the node agent enforces a NetworkPolicy on the
// node: an unmeshed client's packets to the server are dropped and
// counted per policy, a meshed client (through both sidecars) is still
// served, rules deleted by hand come back, and without the policy the
// unmeshed client is served again.
func checkNetworkPolicy(t *testing.T, ctx context.Context, bed *Bed, meshClient, outsideClient string) {
	t.Helper()
	apply(t, ctx, bed, meshOnlyPolicy)
	if err := waitFor(ctx, "the policy to stop the unmeshed client", 30*time.Second, func() error {
		if lines := fetch(t, outsideClient, helloURL, 1, "http1"); allPrefixed(lines, "200") {
			return fmt.Errorf("still served: %q", lines)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if lines := fetch(t, meshClient, helloURL, 5, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("with the policy, the meshed client got %q, want the greeting", lines)
	}
	metrics := get(t, "http://"+nodeAddr+":15090/metrics")
	denied := regexp.MustCompile(`trellis_netpol_denied_packets_total\{direction="ingress",namespace="mesh",policy="mesh-members-only"\} ([1-9][0-9]*)`)
	if !denied.MatchString(metrics) {
		t.Errorf("the node agent's metrics count no packet denied by mesh/mesh-members-only:\n%s", grepLines(metrics, "trellis_netpol"))
	}
	// Drift: every rule of the table flushed by hand is back within
	// the agent's resync.
	rules := func() int {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", netnsName, "nft", "-j", "list", "table", "ip", "trellis-netpol").Output()
		if err != nil {
			t.Fatalf("the node agent's table: %v", err)
		}
		return strings.Count(string(out), `{"rule":`)
	}
	want := rules()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", netnsName, "nft", "flush", "table", "ip", "trellis-netpol").CombinedOutput(); err != nil {
		t.Fatalf("nft flush: %v\n%s", err, out)
	}
	if err := waitFor(ctx, "the flushed rules to come back", 5*time.Second, func() error {
		if got := rules(); got != want {
			return fmt.Errorf("%d of %d rules", got, want)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if lines := fetch(t, outsideClient, helloURL, 1, "http1"); allPrefixed(lines, "200") {
		t.Errorf("after the repair, the unmeshed client was served: %q", lines)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "delete", "networkpolicy", "mesh-members-only"); err != nil {
		t.Fatal(err, out)
	}
	if err := waitFor(ctx, "the unmeshed client to be served without the policy", 30*time.Second, func() error {
		if lines := fetch(t, outsideClient, helloURL, 1, "http1"); !allPrefixed(lines, "200 hello from") {
			return fmt.Errorf("got %q", lines)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// checkPolicyPortsWithSidecars: a port rule means for meshed traffic what
// it says (docs/network-policy.md, "Policies and sidecars"): the client's
// sidecar connects to the server pod's app port over mTLS, and the node
// checks that port. Allowing the app port (8080) lets the meshed client
// in; allowing only another port (9090) keeps it out once it must open
// new connections (established ones pass, as with any policy engine): the
// servers are restarted for that.
func checkPolicyPortsWithSidecars(t *testing.T, ctx context.Context, bed *Bed, meshClient string) {
	t.Helper()
	allowPort := func(port int) {
		t.Helper()
		apply(t, ctx, bed, fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: hello-port, namespace: mesh}
spec:
  podSelector: {matchLabels: {app: hello}}
  ingress: [{ports: [{port: %d, protocol: TCP}]}]
`, port))
	}
	restartServers := func() {
		t.Helper()
		for _, args := range [][]string{{"rollout", "restart", "deployment/hello"}, {"rollout", "status", "deployment/hello", "--timeout=120s"}} {
			if out, err := bed.kubectl(ctx, append([]string{"-n", "mesh"}, args...)...); err != nil {
				t.Fatal(err, out)
			}
		}
	}
	allowPort(9090)
	restartServers()
	if err := waitFor(ctx, "the meshed client to be kept off the app port", 30*time.Second, func() error {
		if lines := fetch(t, meshClient, helloURL, 1, "http1"); allPrefixed(lines, "200") {
			return fmt.Errorf("still served: %q", lines)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	denied := regexp.MustCompile(`trellis_netpol_denied_packets_total\{direction="ingress",namespace="mesh",policy="hello-port"\} [1-9]`)
	if metrics := get(t, "http://"+nodeAddr+":15090/metrics"); !denied.MatchString(metrics) {
		t.Errorf("allowing port 9090 only: no packet denied by mesh/hello-port:\n%s", grepLines(metrics, "trellis_netpol_denied"))
	}
	allowPort(8080)
	if err := waitFor(ctx, "the meshed client to be served on the app port", 30*time.Second, func() error {
		if lines := fetch(t, meshClient, helloURL, 3, "http1"); !allPrefixed(lines, "200 hello from") {
			return fmt.Errorf("got %q", lines)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "delete", "networkpolicy", "hello-port"); err != nil {
		t.Fatal(err, out)
	}
}

// checkNoTrellis fails t for anything of Trellis left in the cluster, and
// on the node.
func checkNoTrellis(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	for _, check := range [][]string{
		{"get", "namespace", "trellis-system"},
		{"get", "crd", "peerauthentications.security.trellis.io"},
		{"get", "crd", "authorizationpolicies.security.trellis.io"},
		{"get", "crd", "requestauthentications.security.trellis.io"},
		{"get", "mutatingwebhookconfiguration", "trellis-sidecar-injector"},
		{"get", "clusterrole", "trellis-control"},
		{"get", "clusterrolebinding", "trellis-control"},
		{"get", "clusterrole", "trellis-node"},
		{"get", "clusterrolebinding", "trellis-node"},
	} {
		if out, err := bed.kubectl(ctx, check...); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("after uninstall, kubectl %s: %s", strings.Join(check, " "), out)
		}
	}
	if left, _ := bed.kubectl(ctx, "get", "all,sa,role,rolebinding,secret,configmap", "-A", "-l", "app.kubernetes.io/part-of=trellis", "-o", "name"); strings.TrimSpace(left) != "" {
		t.Errorf("after uninstall, objects of Trellis are left:\n%s", left)
	}
	for _, family := range []string{"ip", "bridge"} {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", netnsName, "nft", "list", "table", family, "trellis-netpol").CombinedOutput(); err == nil {
			t.Errorf("after uninstall, the node agent's %s table is still in the node's kernel:\n%.500s", family, out)
		}
	}
}

// checkUpgrade installs another build over the running one while the
// meshed client makes 200 requests a second: the images built again under
// a new tag and version (bedtest-next), as a release brings them, and
// workload certificates of 20 s, which rolls the control plane and the
// node agents. Not one request may fail; pods already running keep their
// sidecar, and pods started afterwards get the new one and serve.
func checkUpgrade(t *testing.T, ctx context.Context, bed *Bed, trellis func(args ...string) *exec.Cmd, meshClient string) {
	t.Helper()
	loadImages(t, ctx, bed, trellis().Path, "bedtest-next")
	onlyTag := func(what string, got map[string]string, want string) {
		t.Helper()
		if len(got) == 0 {
			t.Errorf("%s: no pod found", what)
		}
		for pod, tag := range got {
			if tag != want {
				t.Errorf("%s: pod %s says it is build %q, want %q", what, pod, tag, want)
			}
		}
	}
	onlyTag("the control plane before the upgrade", builds(t, ctx, bed, "trellis-system", "app=trellis-control", "15014/metrics"), "bedtest")
	loadDone := startLoad(meshClient, helloURL, 200, 40)
	time.Sleep(3 * time.Second)
	out, err := trellis("install", "--set", "image.tag=bedtest-next", "--set", "image.pullPolicy=Never", "--set", "controlPlane.replicas=2",
		"--set", "controlPlane.certificateTTL=20s").CombinedOutput()
	if err != nil {
		t.Errorf("trellis install of the next build: %v\n%s", err, out)
	}
	if got := <-loadDone; !onlyOK(got) {
		t.Errorf("upgrade under load: outcomes\n%s", got)
	} else {
		t.Logf("upgrade under load: %s", strings.ReplaceAll(got, "\n", "; "))
	}
	for _, app := range []string{"trellis-control", "trellis-node"} {
		images, _ := bed.kubectl(ctx, "-n", "trellis-system", "get", "pods", "-l", "app="+app, "-o", "jsonpath={.items[*].spec.containers[0].image}")
		if f := strings.Fields(images); len(f) == 0 || slices.ContainsFunc(f, func(i string) bool { return !strings.HasSuffix(i, ":bedtest-next") }) {
			t.Errorf("after the upgrade, the %s pods run %q, want only the next build", app, images)
		}
	}
	sidecar := func(ns, selector string) string {
		images, _ := bed.kubectl(ctx, "-n", ns, "get", "pods", "-l", selector, "-o",
			`jsonpath={range .items[*]}{.spec.initContainers[?(@.name=="trellis-proxy")].image} {end}`)
		return strings.TrimSpace(images)
	}
	if got := sidecar("mesh", "app=client"); got != "trellis.local/trellis-proxy:bedtest" {
		t.Errorf("the client's running pod has sidecar %q after the upgrade, want the one it started with", got)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "restart", "deployment/hello"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	// The old pods take their grace period to go.
	if err := waitFor(ctx, "hello's pods on the next build's sidecar", time.Minute, func() error {
		if got := sidecar("mesh", "app=hello"); got != strings.TrimSpace(strings.Repeat("trellis.local/trellis-proxy:bedtest-next ", 3)) {
			return fmt.Errorf("hello's pods started after the upgrade have sidecars %q, want the next build's", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if lines := fetch(t, meshClient, helloURL, 30, "http1"); !allPrefixed(lines, "200 hello from") {
		t.Errorf("through the old client sidecar to the new server sidecars: %q", lines)
	}
	// The builds say which they are, as istiod's and Envoy's istio_build do.
	onlyTag("the control plane after the upgrade", builds(t, ctx, bed, "trellis-system", "app=trellis-control", "15014/metrics"), "bedtest-next")
	onlyTag("hello's new sidecars", builds(t, ctx, bed, "mesh", "app=hello", "15020/stats/prometheus"), "bedtest-next")
	onlyTag("the client's old sidecar", builds(t, ctx, bed, "mesh", "app=client", "15020/stats/prometheus"), "bedtest")
}

// checkShortCertificates: with the hello pods on certificates of 20 s
// (they started after the upgrade set that), 200 requests a second for two
// minutes, through about a dozen renewals of each sidecar, and not one may
// fail. Then the lifetime goes back to a day, which the sidecars take at
// their next renewal.
func checkShortCertificates(t *testing.T, ctx context.Context, trellis func(args ...string) *exec.Cmd, meshClient string) {
	t.Helper()
	certs := func() (map[string]time.Duration, error) {
		out, err := trellis("proxy-status", "--kubernetes", "-o", "json").Output()
		if err != nil {
			return nil, err
		}
		var sts []struct {
			Namespace, Pod string
			CertNotAfter   time.Time
		}
		if err := json.Unmarshal(out, &sts); err != nil {
			return nil, err
		}
		left := map[string]time.Duration{}
		for _, s := range sts {
			if s.Namespace == "mesh" && strings.HasPrefix(s.Pod, "hello-") {
				left[s.Pod] = time.Until(s.CertNotAfter)
			}
		}
		return left, nil
	}
	if left, err := certs(); err != nil || len(left) != 3 {
		t.Errorf("proxy-status of the hello pods: %v, %v", left, err)
	} else {
		for pod, d := range left {
			if d > 21*time.Second {
				t.Errorf("%s's certificate expires in %s, want at most 20s", pod, d)
			}
		}
	}
	if got := <-startLoad(meshClient, helloURL, 200, 120); !onlyOK(got) {
		t.Errorf("two minutes on certificates of 20s under load: outcomes\n%s", got)
	} else {
		t.Logf("two minutes on certificates of 20s under load: %s", strings.ReplaceAll(got, "\n", "; "))
	}
	out, err := trellis("install", "--set", "image.tag=bedtest-next", "--set", "image.pullPolicy=Never", "--set", "controlPlane.replicas=2").CombinedOutput()
	if err != nil {
		t.Fatalf("trellis install with certificates of a day again: %v\n%s", err, out)
	}
	if err := waitFor(ctx, "the hello pods renewed to certificates of a day", time.Minute, func() error {
		left, err := certs()
		for pod, d := range left {
			if d < time.Hour {
				err = errors.Join(err, fmt.Errorf("%s: %s left", pod, d))
			}
		}
		if len(left) != 3 {
			err = errors.Join(err, fmt.Errorf("%d hello pods in proxy-status", len(left)))
		}
		return err
	}); err != nil {
		t.Error(err)
	}
}

// checkClusterGraph reads the graph of the requests made so far, which
// the dashboard draws from the sidecars' metrics scraped through the API
// server: `trellis graph --kubernetes` prints the meshed client's edge to
// hello, and `trellis dashboard --kubernetes` serves the dashboard on a
// local port (port-forwarded) until interrupted.
func checkClusterGraph(t *testing.T, ctx context.Context, trellis func(args ...string) *exec.Cmd) {
	t.Helper()
	edge := regexp.MustCompile(`mesh/client\s+hello\.mesh \(service\)\s+\S+\s+[\d.]+\s+100\.0%`)
	if err := waitFor(ctx, "the client's edge in trellis graph --kubernetes", 30*time.Second, func() error {
		out, err := trellis("graph", "--kubernetes", "-n", "mesh", "--window", "5m").CombinedOutput()
		if err != nil || !edge.Match(out) {
			return fmt.Errorf("%v:\n%s", err, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// The port-forward reaches one replica, and each replica scrapes the
	// sidecars on its own every 5s: the one reached may not yet have
	// scraped since the traffic the other one already shows.
	page, stop := forwardDashboard(t, trellis)
	if err := waitFor(ctx, "the client's edge in the port-forwarded dashboard's graph", 30*time.Second, func() error {
		g := get(t, page+"api/graph?window=5m&namespaces=mesh")
		if !strings.Contains(g, `"wl:mesh/client\u003esvc:mesh/hello:`) && !strings.Contains(g, `"wl:mesh/client>svc:mesh/hello:`) {
			return fmt.Errorf("no edge from the client to hello:\n%.2000s", g)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if body := get(t, page); !strings.Contains(body, "<html") {
		t.Errorf("the port-forwarded dashboard's page:\n%.500s", body)
	}
	if err := stop(); err != nil {
		t.Errorf("trellis dashboard --kubernetes, interrupted: %v", err)
	}
}

// forwardDashboard starts `trellis dashboard --kubernetes` on a free local
// port and returns the URL it prints, once it prints it, and a stop that
// interrupts it and returns how it ended.
func forwardDashboard(t *testing.T, trellis func(args ...string) *exec.Cmd) (string, func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dash := trellis("dashboard", "--kubernetes", "--port", fmt.Sprint(port), "--browser=false")
	stdout, err := dash.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	dash.Stderr = &stderr
	if err := dash.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() error {
		_ = dash.Process.Signal(os.Interrupt)
		if err := dash.Wait(); err != nil {
			return fmt.Errorf("%v (stderr: %s)", err, stderr.String())
		}
		return nil
	}
	printed := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		printed <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	want := fmt.Sprintf("http://127.0.0.1:%d/", port)
	select {
	case line := <-printed:
		if line != "dashboard: "+want+"\n" {
			_ = stop()
			t.Fatalf("trellis dashboard --kubernetes printed %q, want the URL %s (stderr: %s)", line, want, stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = stop()
		t.Fatalf("trellis dashboard --kubernetes printed no URL in 30s (stderr: %s)", stderr.String())
	}
	return want, stop
}

// stepper logs each step of a test with the time since it began.
func stepper(t *testing.T) func(what string) {
	start := time.Now()
	return func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }
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

// buildWorkload builds ./workloads/NAME as a static binary and returns
// its path.
func buildWorkload(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./workloads/"+name)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

// loadHello builds the test workload and loads it as
// trellis.local/test/hello:1.
func loadHello(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	if err := bed.LoadImage(ctx, "trellis.local/test/hello:1", buildWorkload(t, ctx, "hello"), nil); err != nil {
		t.Fatal(err)
	}
}

// installTrellis runs `trellis install` with the bed's images (tag
// bedtest, never pulled) and the extra arguments given, failing t with the
// control plane's last logs when it fails.
func installTrellis(t *testing.T, ctx context.Context, bed *Bed, trellis func(args ...string) *exec.Cmd, extra ...string) {
	t.Helper()
	args := append([]string{"install", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never"}, extra...)
	if out, err := trellis(args...).CombinedOutput(); err != nil {
		logs, _ := bed.kubectl(ctx, "-n", "trellis-system", "logs", "deploy/trellis-control", "--tail=50")
		t.Fatalf("trellis install: %v\n%s\ncontrol plane logs:\n%s", err, out, logs)
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
	loadImages(t, ctx, bed, bin, "bedtest")
	return func(args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+bed.Kubeconfig())
		return cmd
	}
}

// loadImages builds Trellis's images of this checkout with the CLI at bin,
// tagged (and versioned) tag, and loads them into the bed.
func loadImages(t *testing.T, ctx context.Context, bed *Bed, bin, tag string) {
	t.Helper()
	images := exec.CommandContext(ctx, bin, "images", "build", "--tag", tag, "--out", t.TempDir(), "--load-into-k8sbed")
	images.Dir = "../.."
	images.Env = append(os.Environ(), "K8SBED_DIR="+bed.cfg.Dir)
	if out, err := images.CombinedOutput(); err != nil {
		t.Fatalf("trellis images build --tag %s --load-into-k8sbed: %v\n%s", tag, err, out)
	}
}

// builds reads the istio_build series of the pods of ns matching
// selector, through the API server's pod proxy: pod name -> tag.
func builds(t *testing.T, ctx context.Context, bed *Bed, ns, selector, portPath string) map[string]string {
	t.Helper()
	pods, err := bed.kubectl(ctx, "-n", ns, "get", "pods", "-l", selector, "--field-selector", "status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name}={.metadata.deletionTimestamp}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	port, path, _ := strings.Cut(portPath, "/")
	out := map[string]string{}
	tag := regexp.MustCompile(`(?m)^istio_build\{component="[a-z]+",tag="([^"]*)"\} 1$`)
	for _, line := range strings.Fields(pods) {
		pod, deleting, _ := strings.Cut(line, "=")
		if deleting != "" {
			continue // an old pod on its way out
		}
		metrics, err := bed.kubectl(ctx, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/"+pod+":"+port+"/proxy/"+path)
		if m := tag.FindStringSubmatch(metrics); err == nil && m != nil {
			out[pod] = m[1]
		} else {
			out[pod] = fmt.Sprintf("no istio_build (%v)", err)
		}
	}
	return out
}

// apply applies a manifest, retrying while a fresh namespace's default
// ServiceAccount is not there yet.
func apply(t *testing.T, ctx context.Context, bed *Bed, manifest string) {
	t.Helper()
	f := writeTemp(t, manifest)
	if err := waitFor(ctx, "apply", 30*time.Second, func() error {
		_, err := bed.kubectl(ctx, "apply", "-f", f)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// podIP is the address of a running pod of ns matching selector that is
// not being deleted (a rollout's old pod may still be running).
func podIP(t *testing.T, ctx context.Context, bed *Bed, ns, selector string) string {
	t.Helper()
	var ip string
	if err := waitFor(ctx, "a running pod "+selector+" in "+ns, 30*time.Second, func() error {
		out, err := bed.kubectl(ctx, "-n", ns, "get", "pods", "-l", selector, "--field-selector=status.phase=Running",
			"-o", `jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.status.podIP}{"\n"}{end}`)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if deleting, addr, _ := strings.Cut(line, "|"); deleting == "" && addr != "" {
				ip = addr
				return nil
			}
		}
		return fmt.Errorf("none yet: %q", out)
	}); err != nil {
		t.Fatal(err)
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

// nodeGateway is the node's address on the pod bridge (host-local's first
// address), where the kubelet's probes come from.
const nodeGateway = "10.244.0.1"

// capture records the TCP packets between pods on the node's links (the
// host ends of the pods' veths) while during runs, as text.
func capture(t *testing.T, ctx context.Context, during func()) string {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump is missing: apt-get install tcpdump (scripts/k8sbed.sh does)")
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", netnsName, "tcpdump", "-i", "any", "-nn", "-l", "-A", "-s", "0",
		"tcp and src net "+nodePodCIDR+" and dst net "+nodePodCIDR+" and not host "+nodeGateway) // pod to pod: not the test's calls from the host, nor the kubelet's probes (from the node, answered in plaintext as without a mesh)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tcpdump opens its sockets
	during()
	time.Sleep(500 * time.Millisecond)
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	return out.String()
}

// startLoad has the hello pod at podIP call url at rps for seconds, and
// delivers its report (outcome counts, first errors) when done.
func startLoad(podIP, url string, rps, seconds int) <-chan string {
	done := make(chan string, 1)
	go func() {
		client := &http.Client{Timeout: time.Duration(seconds+30) * time.Second}
		resp, err := client.Get(fmt.Sprintf("http://%s:8080/load?rps=%d&seconds=%d&url=%s", podIP, rps, seconds, url))
		if err != nil {
			done <- "load: " + err.Error()
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		done <- strings.TrimSpace(string(body))
	}()
	return done
}

// onlyOK reports whether a load report has successes only.
func onlyOK(report string) bool {
	lines := strings.Split(report, "\n")
	return len(lines) == 1 && (strings.HasPrefix(lines[0], "200 ") || strings.HasPrefix(lines[0], "OK "))
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

// meshManifest: a meshed namespace with the 3-replica server and a client,
// and a client in a namespace outside the mesh. The test drives the meshed
// client from the host, outside the mesh: its port 8080 is left out of the
// inbound capture (its outbound is not).
var meshManifest = `apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: mesh}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}, {name: grpc, port: 9090, targetPort: grpc}]
` + helloDeployment("mesh", "hello", 3, "") +
	helloDeployment("mesh", "client", 1, `traffic.sidecar.istio.io/excludeInboundPorts: "8080"`) +
	helloDeployment("outside", "client", 1, "")

// helloDeployment is a Deployment of the test workload (HTTP on 8080,
// gRPC on 9090, ready when / answers), as a YAML document; annotations are
// the pod template's (flow-map entries, or "").
func helloDeployment(ns, name string, replicas int, annotations string) string {
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}, annotations: {%[4]s}}
    spec:
      containers:
      - name: %[2]s
        image: trellis.local/test/hello:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
`, ns, name, replicas, annotations)
}

// gitopsManifest is the client as a GitOps repository holds it, before
// `trellis inject`.
var gitopsManifest = helloDeployment("gitops", "client", 1,
	`traffic.sidecar.istio.io/excludeInboundPorts: "8080", traffic.sidecar.istio.io/excludeOutboundPorts: "9090"`)
