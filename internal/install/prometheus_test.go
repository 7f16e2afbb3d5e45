package install

import (
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestPrometheusScrapesOnlyPlainPaths: any pod's owner writes the
// prometheus.io annotations, and the server scrapes through the API
// server's pod proxy with the right to reach every pod: a path that climbs
// out of the pod's own proxy URL, or carries an escape or a query, must
// drop the target (Prometheus anchors relabel regexes, as here).
func TestPrometheusScrapesOnlyPlainPaths(t *testing.T) {
	var cfg struct {
		ScrapeConfigs []struct {
			RelabelConfigs []struct {
				SourceLabels []string `json:"source_labels"`
				Action       string
				Regex        string
			} `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(prometheusConfig(Defaults())), &cfg); err != nil {
		t.Fatal(err)
	}
	var keep *regexp.Regexp
	for _, r := range cfg.ScrapeConfigs[0].RelabelConfigs {
		if r.Action == "keep" && len(r.SourceLabels) == 2 && r.SourceLabels[0] == "__meta_kubernetes_pod_annotation_prometheus_io_path" {
			keep = regexp.MustCompile("^(?:" + r.Regex + ")$")
		}
	}
	if keep == nil {
		t.Fatal("no keep rule on the path and port annotations")
	}
	for path, want := range map[string]bool{
		"/stats/prometheus": true, "/metrics": true, "/a.b/c-d_e": true,
		"": false, "/": false, "//metrics": false, "/../kube-system/pods/x:80/proxy/metrics": false,
		"/a/../b": false, "/./metrics": false, "/%2e%2e/x": false, "/metrics?x=1": false, "/metrics#x": false,
		"/a;b": false, "/metrics\n": false, "metrics": false,
	} {
		if got := keep.MatchString(path + ";15020"); got != want {
			t.Errorf("path %q kept = %v, want %v", path, got, want)
		}
	}
	if keep.MatchString("/metrics;") || keep.MatchString("/metrics;http") {
		t.Error("a target without a numeric port annotation is kept")
	}
}
