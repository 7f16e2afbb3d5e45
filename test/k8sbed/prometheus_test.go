package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestPrometheusOnKubernetes installs Trellis with its Prometheus server
// (the bed's image of Prometheus, built from its module) through `trellis demo
// --kubernetes --keep`, whose own checks then read the graph from that
// Prometheus, the database's edges included although the walkthrough's
// policy isolates its pods (the scrapes go through the API server). Then
// every query of the panels of Istio's Grafana dashboards (istio-mesh,
// istio-service, istio-workload) runs against it, and the dashboard,
// port-forwarded by `trellis dashboard --kubernetes`, draws the demo's
// edges in headless Chromium. Last, an AuthorizationPolicy applied as a
// custom resource is enforced by the database's sidecar.
func TestPrometheusOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium: install Debian's chromium (scripts/test.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	trellis := buildTrellis(t, ctx, bed)
	// The binary goes in as /prometheus-server: /prometheus is the data
	// directory the install mounts, as in Prometheus's own image.
	const promImage = "trellis.local/k8sbed/prometheus:bed"
	built, err := bed.BuildExtra(ctx, "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	server := filepath.Join(t.TempDir(), "prometheus-server")
	if data, err := os.ReadFile(filepath.Join(built, "prometheus")); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(server, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := bed.LoadImage(ctx, promImage, server, nil); err != nil {
		t.Fatal(err)
	}
	step("images loaded")

	demo := []string{"demo", "--kubernetes", "--keep", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never",
		"--set", "prometheus.enabled=true", "--set", "prometheus.image=" + promImage, "--set", "prometheus.scrapeInterval=2s", "--set", "tracing.sampling=100"}
	out, err := trellis(demo...).CombinedOutput()
	t.Logf("trellis %s:\n%s", strings.Join(demo, " "), out)
	defer func() { // before ctx is canceled
		_, _ = bed.kubectl(ctx, "delete", "namespace", "db", "client-allow", "client-deny", "--wait", "--timeout=120s")
		if out, err := trellis("uninstall").CombinedOutput(); err != nil {
			t.Errorf("trellis uninstall: %v\n%s", err, out)
		}
	}()
	if err != nil {
		logs, _ := bed.kubectl(ctx, "-n", "trellis-system", "logs", "deploy/trellis-prometheus", "--tail=30")
		t.Fatalf("the demo failed with the dashboard reading Prometheus: %v\nPrometheus's log:\n%s", err, logs)
	}
	if args, _ := bed.kubectl(ctx, "-n", "trellis-system", "get", "deploy/trellis-control", "-o", "jsonpath={.spec.template.spec.containers[0].args}"); !strings.Contains(args, "http://trellis-prometheus.trellis-system.svc:9090") {
		t.Errorf("the control plane's dashboard does not read the install's Prometheus: args %s", args)
	}
	step("the demo passed, its graph read from Prometheus")

	checkClusterVerbs(t, ctx, bed, trellis)
	step("trellis get and exec on the cluster")

	// A TCP service beside the database, for the dashboards' TCP panels:
	// the meshed client connects to it for a while.
	apply(t, ctx, bed, tcpManifest)
	if out, err := bed.kubectl(ctx, "-n", "db", "rollout", "status", "deployment/demo-tcp", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := bed.kubectl(ctx, "-n", "client-allow", "exec", "client", "--", "trellis", "example", "probe",
		"--for", "8s", "--interval", "50ms", "tcp/demo-tcp.db.svc.cluster.local:7000"); err != nil {
		t.Fatal(err, out)
	}
	step("TCP traffic")

	checkIstioDashboards(t, ctx, bed)
	step("Istio's dashboards' queries")

	browseClusterDashboard(t, ctx, trellis, chromium)
	step("the dashboard in Chromium")

	checkAuthorizationOnKubernetes(t, ctx, bed, trellis)
	step("AuthorizationPolicy as a custom resource")
}

// checkIstioDashboards runs every query of testdata/istio-dashboards.promql
// through the API server's service proxy to the install's Prometheus, with
// the dashboards' variables set as a user looking at the demo's database
// would set them, and again looking at the TCP service and at its client.
// Each must run; each panel must show data in one of the views. (A panel's queries come in
// pairs that split traffic, mTLS and not, or source and destination
// reported, so one of a pair is empty by design.)
func checkIstioDashboards(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	data, err := os.ReadFile("testdata/istio-dashboards.promql")
	if err != nil {
		t.Fatal(err)
	}
	views := []*strings.Replacer{
		strings.NewReplacer("$service", "demo-graph-alpha-v2.db.svc.cluster.local", "$workload", "demo-graph-alpha-v2", "$namespace", "db"),
		strings.NewReplacer("$service", "demo-tcp.db.svc.cluster.local", "$workload", "demo-tcp", "$namespace", "db"),
		// The TCP service's client, for the workload dashboard's outgoing
		// TCP panels.
		strings.NewReplacer("$service", "demo-tcp.db.svc.cluster.local", "$workload", "client", "$namespace", "client-allow"),
	}
	common := strings.NewReplacer(
		"$__rate_interval", "1m",
		"$qrep", "destination",
		// Multi-value variables left at "All".
		"$srcns", ".*", "$srcwl", ".*", "$dstns", ".*", "$dstwl", ".*", "$dstsvc", ".*",
	)
	var panels []string
	shows := map[string]bool{}
	var panel string
	ran := 0
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "## "); ok {
			panel = p
			if !slices.Contains(panels, p) {
				panels = append(panels, p)
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		ran++
		for _, view := range views {
			q := common.Replace(view.Replace(line))
			n, err := promQuery(ctx, bed, q)
			if err != nil {
				t.Errorf("%s: %v\n  %s", panel, err, q)
			}
			shows[panel] = shows[panel] || n > 0
		}
	}
	if ran < 150 {
		t.Errorf("ran %d of the dashboards' queries, want all (about 160)", ran)
	}
	for _, p := range panels {
		if !shows[p] {
			t.Errorf("panel %s shows no data", p)
		}
	}
	t.Logf("%d queries of %d panels of Istio's dashboards ran, %d times", ran, len(panels), len(views))
}

// promQuery runs an instant query against the install's Prometheus and
// returns how many series or samples it answered.
func promQuery(ctx context.Context, bed *Bed, query string) (int, error) {
	out, err := bed.kubectl(ctx, "get", "--raw",
		"/api/v1/namespaces/trellis-system/services/trellis-prometheus:9090/proxy/api/v1/query?query="+url.QueryEscape(query))
	if err != nil {
		return 0, err
	}
	var resp struct {
		Status string
		Error  string
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		}
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return 0, fmt.Errorf("%v: %.300s", err, out)
	}
	if resp.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", resp.Error)
	}
	if resp.Data.ResultType == "scalar" {
		return 1, nil
	}
	var series []json.RawMessage
	if err := json.Unmarshal(resp.Data.Result, &series); err != nil {
		return 0, err
	}
	return len(series), nil
}

// browseClusterDashboard port-forwards the dashboard with `trellis
// dashboard --kubernetes` and checks, in headless Chromium, that it draws
// the demo's edges (from Prometheus), the denied one in red dashes.
func browseClusterDashboard(t *testing.T, ctx context.Context, trellis func(args ...string) *exec.Cmd, chromium string) {
	t.Helper()
	page, stop := forwardDashboard(t, trellis)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("trellis dashboard --kubernetes, interrupted: %v", err)
		}
	}()

	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.WindowSize(1400, 900))
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	bctx, cancel = context.WithTimeout(bctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(bctx, chromedp.Navigate(page+"?window=5m"), chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"]`))); err != nil {
		t.Fatalf("the dashboard at %s: %v", page, err)
	}
	edges, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`trellis.cy.edges(':visible').map(e => e.id())`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:http",
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc",
		"wl:db/demo-graph-alpha-v2>svc:db/demo-graph-zero:grpc",
		"svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route",
	} {
		if !slices.Contains(edges, want) {
			t.Errorf("the dashboard draws no edge %s; it draws %v", want, edges)
		}
	}
	// The gRPC edge's panel: its recent requests, from the sidecars'
	// spans (traced at 100%), name the calls.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](
		`trellis.cy.getElementById("wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc").emit("tap").nonempty()`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.WaitVisible(chromedp.CSS(`#requests tbody tr td`))); err != nil {
		t.Errorf("the edge's panel shows no recent requests: %v", err)
	}
	rows, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#requests tbody tr')].map(r => r.innerText)`))
	if !strings.Contains(strings.Join(rows, "\n"), "CheckVersion") {
		t.Errorf("recent requests of the gRPC edge: %q, want CheckVersion calls", rows)
	}
	denied, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](
		`(e => e.nonempty() ? [e.style('line-style'), e.style('line-color')] : [])(trellis.cy.edges('[source = "wl:client-deny/client"][protocol = "ip"]').first())`))
	if err != nil || len(denied) != 2 || denied[0] != "dashed" {
		t.Errorf("the policy's denials are drawn as %v (%v), want a dashed edge from client-deny", denied, err)
	}
}

// tcpManifest is a TCP service beside the demo's database: each connection
// gets the pod's name and is closed.
const tcpManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-tcp, namespace: db}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo-tcp}}
  template:
    metadata: {labels: {app: demo-tcp}}
    spec:
      containers:
      - name: server
        image: trellis.local/trellis-demo:bedtest
        imagePullPolicy: Never
        command: [trellis, example, ports-server, --port, "7000"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: tcp-echo, containerPort: 7000}
---
apiVersion: v1
kind: Service
metadata: {name: demo-tcp, namespace: db}
spec:
  selector: {app: demo-tcp}
  ports:
  - {name: tcp-echo, port: 7000, targetPort: tcp-echo}
`
