package cli_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The README's first command: `trellis demo` runs the reference
// walkthrough, every check passes, and it leaves nothing behind; with
// --keep the dashboard stays up, and a real browser (headless Chromium)
// draws the graph the walkthrough promises: HTTP and gRPC edges into
// demo-graph-alpha's v2, to which the client's route sends them, the
// route's split, and alpha's edge to demo-graph-zero.
func TestDemo(t *testing.T) {
	m := newMesh(t)
	out, errOut, err := m.runWithin(3*time.Minute, "demo", "--traffic", "3s")
	if err != nil {
		t.Fatalf("trellis demo: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	for _, want := range []string{"TEST 0", "TEST 1", "TEST 2", "TEST 3", "timed out", "mTLS, caller spiffe://cluster.local/ns/client-allow/sa/default",
		"TEST 4", "refused by alpha's sidecar: POST /query: 403 Forbidden: RBAC: access denied",
		"dashboard: http://127.0.0.1:20001/", "checks passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("trellis demo printed no %q:\n%s", want, out)
		}
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("trellis demo (without --keep) left %v behind", left)
	}

	out, errOut, err = m.runWithin(3*time.Minute, "demo", "--keep", "--traffic", "5s")
	if err != nil {
		t.Fatalf("trellis demo --keep: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	t.Log(out)
	if !strings.Contains(m.must("graph", "--window", "2m"), "demo-graph-zero.db (service)") {
		t.Errorf("trellis graph shows no edge to demo-graph-zero")
	}
	resp, err := http.Get("http://127.0.0.1:20001/api/graph?window=forever")
	if err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&apiErr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Error, "1m") {
		t.Errorf("GET /api/graph?window=forever = %s %q, want 400 saying what a window looks like", resp.Status, apiErr.Error)
	}
	browseDashboard(t)
}

// browseDashboard opens the dashboard in headless Chromium, checks the
// graph it draws, opens an edge's panel and saves a screenshot.
func browseDashboard(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium: install Debian's chromium (scripts/test.sh does)")
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.WindowSize(1400, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate("http://127.0.0.1:20001/?window=2m")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	ctx, cancel = context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"]`))); err != nil {
		t.Fatalf("the dashboard never loaded its graph: %v", err)
	}
	// What is drawn, read from the page's graph (cytoscape's model of
	// the canvas): "source>target:protocol" of every visible edge.
	edges, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`trellis.cy.edges(':visible').map(e => e.id())`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:http",
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc",
		"wl:db/demo-graph-alpha-v2>svc:db/demo-graph-zero:grpc",
		"svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route",
		"svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v1:route",
	} {
		if !slices.Contains(edges, want) {
			t.Errorf("the dashboard draws no edge %s; it draws %v", want, edges)
		}
	}
	// Test 1's dropped attempts: a red dashed edge from the client outside
	// the mesh, to whichever version the Service sent them.
	denied, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`(e => e.nonempty() ? [e.style('line-style'), e.style('line-color')] : [])(trellis.cy.edges('[source = "wl:client-deny/client"][protocol = "ip"]').first())`))
	if err != nil || len(denied) != 2 || denied[0] != "dashed" || denied[1] != "rgb(201,25,11)" {
		t.Errorf("the policy's denials are drawn as %v (%v), want a red dashed edge from client-deny", denied, err)
	}
	// The route's split: purple dashed edges from the Service to each
	// version's, labelled with their shares.
	split, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`(e => [e.style('line-style'), e.style('line-color'), e.data('label')])(trellis.cy.getElementById("svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-v2:route"))`))
	if err != nil || len(split) != 3 || split[0] != "dashed" || split[1] != "rgb(143,75,191)" || split[2] != "ROUTE 100% for client-allow" {
		t.Errorf("the route's split to v2 is drawn as %q (%v), want a purple dashed edge labelled ROUTE 100%% for client-allow", split, err)
	}
	shapes, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries(trellis.cy.nodes('[kind]').map(n => [n.id(), n.style('shape')]))`))
	if err != nil {
		t.Fatal(err)
	}
	if shapes["svc:db/demo-graph-alpha"] != "triangle" || shapes["wl:db/demo-graph-alpha-v2"] != "rectangle" {
		t.Errorf("node shapes %v: want services as triangles and workloads as squares", shapes)
	}
	// Open the gRPC edge's panel: its charts and recent requests load.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
		`trellis.cy.getElementById("wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc").emit("tap").nonempty()`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`#chart-rps svg`)),
		chromedp.WaitVisible(chromedp.CSS(`#requests tbody tr td`))); err != nil {
		t.Errorf("the edge's panel did not show its charts and requests: %v", err)
	}
	rows, _ := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#requests tbody tr')].map(r => r.innerText)`))
	if len(rows) == 0 || !strings.Contains(strings.Join(rows, "\n"), "CheckVersion") {
		t.Errorf("recent requests of the gRPC edge: %q, want CheckVersion calls", rows)
	}
	screenshot(t, ctx, "trellis-dashboard-demo.png")

	// A Load call's trace: the client's and alpha's sidecars, and alpha's
	// own call to zero (alpha forwards the trace headers), in one trace.
	link, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`[...document.querySelectorAll('#requests tbody tr')].filter(r => r.innerText.includes('Graph/Load')).map(r => r.querySelector('a')?.href).find(Boolean) || ''`))
	if err != nil || link == "" {
		t.Fatalf("no trace link on a recent Load call (%v)", err)
	}
	// Sidecars send their spans within a second of a request, each on
	// its own clock: wait until all four have arrived.
	traceAPI := strings.Replace(link, "trace.html?id=", "api/traces/", 1)
	waitFor(t, "the Load call's four spans to arrive", 15*time.Second, func() bool {
		resp, err := http.Get(traceAPI)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var spans []json.RawMessage
		return json.NewDecoder(resp.Body).Decode(&spans) == nil && len(spans) == 4
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="true"]`))); err != nil {
		t.Fatalf("open the trace %s: %v", link, err)
	}
	services, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#spans tbody tr td:first-child')].map(td => td.innerText)`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"client.client-allow", "demo-graph-alpha.db", "demo-graph-zero.db"} {
		if !slices.Contains(services, want) {
			t.Errorf("trace %s has spans of %v, want %s among them", link, services, want)
		}
	}
	if len(services) != 4 {
		t.Errorf("trace %s has %d spans, want 4 (client and server side of client→alpha and alpha→zero)", link, len(services))
	}
	screenshot(t, ctx, "trellis-dashboard-trace.png")
}

// screenshot saves the page to $TRELLIS_SCREENSHOT_DIR (default the
// system's temporary directory).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("TRELLIS_SCREENSHOT_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
