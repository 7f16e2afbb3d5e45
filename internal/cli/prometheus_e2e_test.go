package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

// With --prometheus, the dashboard reads a real Prometheus server (Debian's
// prometheus, scraping every sidecar's :15020/stats/prometheus) instead of
// its own store, and draws the same demo graph from PromQL; when that
// server goes away the graph API says so instead of showing nothing.
func TestDashboardReadsPrometheus(t *testing.T) {
	m := newMesh(t)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("no prometheus: install Debian's prometheus (scripts/test.sh does)")
	}
	dir := t.TempDir()
	addr := freeLoopbackAddr(t)
	targets := filepath.Join(dir, "targets.json")
	if err := os.WriteFile(targets, []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: trellis-sidecars
  metrics_path: /stats/prometheus
  file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, targets)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	prom := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	var promLog strings.Builder
	prom.Stdout, prom.Stderr = &promLog, &promLog
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			prom.Process.Kill()
			prom.Wait()
		}
	}
	t.Cleanup(stop)

	m.must("up", "-d", "-f", "../../examples/demo/mesh.yaml", "--prometheus", "http://"+addr)
	var eps []string
	waitFor(t, "the demo pods to be ready", time.Minute, func() bool {
		eps = eps[:0]
		ready := 0
		for _, ns := range []string{"db", "client-allow", "client-deny"} {
			for _, p := range m.pods(ns) {
				if p.Ready {
					ready++
				}
				if p.Ready && len(p.Containers) == 2 {
					eps = append(eps, p.IP+":15020")
				}
			}
		}
		return ready == 5 // zero, alpha v1 and v2, the two clients
	})
	sd, _ := json.Marshal([]map[string]any{{"targets": eps}})
	if err := os.WriteFile(targets, sd, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every sidecar in sync", 30*time.Second, func() bool {
		return strings.Count(m.must("proxy-status"), "SYNCED") == 4
	})
	// Prometheus counts growth from its first sample of a series, so the
	// traffic starts once it scrapes all four sidecars.
	waitFor(t, "Prometheus to scrape the 4 sidecars", 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/api/v1/targets?state=active")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Data struct {
				ActiveTargets []struct{ Health string } `json:"activeTargets"`
			} `json:"data"`
		}
		up := 0
		if json.NewDecoder(resp.Body).Decode(&body) == nil {
			for _, tg := range body.Data.ActiveTargets {
				if tg.Health == "up" {
					up++
				}
			}
		}
		return up == 4
	})
	m.must("exec", "-n", "client-allow", "client", "--", "trellis", "example", "graph-client", "traffic", "--rate", "10", "--duration", "5s")

	want := []string{
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:http",
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc",
		"wl:db/demo-graph-alpha-v2>svc:db/demo-graph-zero:grpc",
	}
	var g servicegraph.Graph
	// Until Prometheus has scraped the sidecars after the traffic ended.
	waitFor(t, "the graph from Prometheus to show the demo's edges", 30*time.Second, func() bool {
		out, _, err := m.run("graph", "-o", "json", "--window", "1m")
		if err != nil || json.Unmarshal([]byte(out), &g) != nil {
			return false
		}
		found := 0
		for _, e := range g.Edges {
			for _, id := range want {
				if e.ID == id && e.Requests >= 40 {
					found++
				}
			}
		}
		return found == len(want)
	})
	for _, e := range g.Edges {
		for _, id := range want {
			// Prometheus extrapolates, so counts are not exact; 5 s at 10
			// rounds a second is about 50 of each call.
			if e.ID == id && (e.MTLS != 1 || e.ErrorRate != 0 || e.Requests > 200 || e.P95 == nil) {
				t.Errorf("edge %s from Prometheus: %.1f requests, %.0f%% mTLS, %.1f%% errors, p95 %v; want about 50, all mTLS, none failed",
					id, e.Requests, 100*e.MTLS, 100*e.ErrorRate, e.P95)
			}
		}
	}

	stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:20001/api/graph?window=1m", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body.Error, addr) {
		t.Errorf("graph with Prometheus gone = %s %q, want 502 naming the server at %s", resp.Status, body.Error, addr)
	}
	if t.Failed() {
		t.Logf("prometheus log:\n%s", promLog.String())
	}
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
