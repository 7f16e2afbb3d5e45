package localmesh

import (
	"strings"
	"testing"
)

// The sidecar's worker count comes from Istio's per-pod proxy settings;
// without them it is one.
func TestSidecarConcurrency(t *testing.T) {
	for _, tt := range []struct {
		annotation string // "" means none
		want       int
		err        string
	}{
		{"", 1, ""},
		{"concurrency: 2", 2, ""},
		{`{"concurrency": 0}`, 0, ""}, // one per CPU
		{"holdApplicationUntilProxyStarts: true", 1, ""},
		{"concurrency: -1", 0, "use 0 (one worker per CPU) or more"},
		{"concurrency: two", 0, "write it as YAML"},
	} {
		ann := map[string]string{}
		if tt.annotation != "" {
			ann[proxyConfigAnn] = tt.annotation
		}
		got, err := sidecarConcurrency(ann)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), proxyConfigAnn) {
				t.Errorf("%q: error %v, want one naming %s and saying %q", tt.annotation, err, proxyConfigAnn, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %d, %v; want %d", tt.annotation, got, err, tt.want)
		}
	}
}
