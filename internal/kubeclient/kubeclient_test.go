package kubeclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

const twoClusters = `apiVersion: v1
kind: Config
clusters:
- {name: one, cluster: {server: "https://127.0.0.1:6443"}}
- {name: two, cluster: {server: "https://127.0.0.2:6443"}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: first, context: {cluster: one, user: u}}
- {name: second, context: {cluster: two, user: u}}
current-context: first
`

// The kubeconfig is found as kubectl finds it, and --context picks a
// context in it.
func TestRESTConfigTarget(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	if _, err := os.Stat(clientcmd.RecommendedHomeFile); os.IsNotExist(err) {
		if _, err := RESTConfig(Target{}); err == nil || !strings.Contains(err.Error(), "give --kubeconfig or set KUBECONFIG") {
			t.Errorf("with no kubeconfig anywhere: %v, want a hint", err)
		}
	}
	file := filepath.Join(dir, "config")
	if err := os.WriteFile(file, []byte(twoClusters), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(target Target, host string) {
		t.Helper()
		cfg, err := RESTConfig(target)
		if err != nil || cfg.Host != host {
			t.Errorf("RESTConfig(%+v) = %v, %v; want host %s", target, cfg, err, host)
		}
	}
	check(Target{Kubeconfig: file}, "https://127.0.0.1:6443") // the current context
	check(Target{Kubeconfig: file, Context: "second"}, "https://127.0.0.2:6443")
	t.Setenv("KUBECONFIG", filepath.Join(dir, "absent")+string(filepath.ListSeparator)+file) // a list, as kubectl takes it
	check(Target{}, "https://127.0.0.1:6443")
	check(Target{Context: "second"}, "https://127.0.0.2:6443")
	if _, err := RESTConfig(Target{Context: "third"}); err == nil || !strings.Contains(err.Error(), `context "third"`) {
		t.Errorf("an unknown context: %v, want an error naming it", err)
	}
	if _, err := RESTConfig(Target{Kubeconfig: filepath.Join(dir, "missing")}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing file: %v, want an error naming it", err)
	}
	// A given file that names no cluster is an error even in a pod: never
	// the pod's own cluster instead.
	t.Setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "6443")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := RESTConfig(Target{Kubeconfig: empty}); err == nil || !strings.Contains(err.Error(), "no current context") {
		t.Errorf("an empty kubeconfig given explicitly: %v, %v; want an error", cfg, err)
	}
}
