package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"sigs.k8s.io/yaml"
)

// chartDir is the Helm chart, beside `trellis install` in the repository.
const chartDir = "../../charts/trellis"

// TestHelmChartRendersTheInstall renders charts/trellis with Helm's own
// engine and `trellis install --dry-run` with the same values, and
// requires the same objects (the chart leaves the namespace to
// `helm install --create-namespace`).
func TestHelmChartRendersTheInstall(t *testing.T) {
	for _, sets := range [][]string{
		{"image.tag=v1.2.3"},
		{"image.tag=v1.2.3", "nodeAgent.enabled=false"},
		{"image.tag=v1.2.3", "prometheus.enabled=true", "prometheus.image=registry.example.com/prometheus:v3", "prometheus.scrapeInterval=2s",
			"tracing.sampling=100", "tracing.endpoint=otel-collector.observability:4317"},
		{"image.tag=v9", "image.repository=registry.example.com/mesh", "image.pullPolicy=Always", "controlPlane.replicas=2",
			"trustDomain=example.org", "namespace=mesh-system", "controlPlane.certificateTTL=1h30m"},
		{"image.tag=v1.2.3", "nodeAgent.cniResults=/run/cni/results"},
		{"image.tag=v1.2.3", "nodeAgent.cniResults="},
	} {
		args := []string{"run", "./cmd/trellis", "install", "--dry-run"}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("trellis install --dry-run: %v", err)
		}
		want := objectsOf(t, string(out))
		for k := range want {
			if strings.HasPrefix(k, "Namespace/") {
				delete(want, k)
			}
		}
		got := objectsOf(t, renderChart(t, sets))
		for _, k := range slices.Sorted(keysOf(want, got)) {
			if !reflect.DeepEqual(got[k], want[k]) {
				g, _ := yaml.Marshal(got[k])
				w, _ := yaml.Marshal(want[k])
				t.Errorf("%v: %s differs\nchart:\n%s\ntrellis install:\n%s", sets, k, g, w)
			}
		}
	}
}

// renderChart renders the chart with --set style values.
func renderChart(t *testing.T, sets []string) string {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{}
	for _, s := range sets {
		k, v, _ := strings.Cut(s, "=")
		m := vals
		parts := strings.Split(k, ".")
		for _, p := range parts[:len(parts)-1] {
			if m[p] == nil {
				m[p] = map[string]any{}
			}
			m = m[p].(map[string]any)
		}
		var val any = v // as helm --set types them: numbers and booleans
		if n, err := strconv.Atoi(v); err == nil {
			val = n
		} else if b, err := strconv.ParseBool(v); err == nil {
			val = b
		}
		m[parts[len(parts)-1]] = val
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "trellis", Namespace: "trellis-system", IsInstall: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, name := range slices.Sorted(keysOf(files)) {
		if strings.HasSuffix(name, ".yaml") {
			docs = append(docs, files[name])
		}
	}
	return strings.Join(docs, "\n---\n")
}

// objectsOf parses a YAML stream into objects keyed KIND/NAMESPACE/NAME,
// without what an empty field and its absence both mean (null, {}, [],
// status), so the two renderings compare by meaning.
func objectsOf(t *testing.T, stream string) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, doc := range strings.Split(stream, "\n---") {
		var o map[string]any
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		if o == nil {
			continue
		}
		delete(o, "status")
		meta, _ := o["metadata"].(map[string]any)
		key := o["kind"].(string) + "/" + str(meta["namespace"]) + "/" + str(meta["name"])
		out[key] = prune(o)
	}
	return out
}

func str(v any) string { s, _ := v.(string); return s }

func prune(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if e = prune(e); e == nil {
				delete(v, k)
			} else {
				v[k] = e
			}
		}
		if len(v) == 0 {
			return nil
		}
	case []any:
		if len(v) == 0 {
			return nil
		}
		for i := range v {
			v[i] = prune(v[i])
		}
	}
	return v
}

func keysOf[V any](ms ...map[string]V) func(func(string) bool) {
	seen := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			seen[k] = true
		}
	}
	return func(yield func(string) bool) {
		for k := range seen {
			if !yield(k) {
				return
			}
		}
	}
}

// TestHelmInstall installs Trellis with the chart through Helm's own CLI
// (built from the pinned module) on a fresh bed: a labelled namespace's
// pods are injected and `trellis check` passes; `helm uninstall` and
// deleting the namespace leave nothing of Trellis.
func TestHelmInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	loadHello(t, ctx, bed)
	trellis := buildTrellis(t, ctx, bed)
	helm := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "go", append([]string{"tool", "helm", "--kubeconfig", bed.Kubeconfig()}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := helm("install", "trellis", chartDir, "-n", "trellis-system", "--create-namespace",
		"--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never", "--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, bed, "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio-injection: enabled}}\n"+
		helloDeployment("mesh", "hello", 2, ""))
	if out, err := bed.kubectl(ctx, "-n", "mesh", "rollout", "status", "deployment/hello", "--timeout=180s"); err != nil {
		t.Fatal(err, out)
	}
	if err := waitFor(ctx, "trellis check", time.Minute, func() error {
		out, err := trellis("check").CombinedOutput()
		if err == nil && !strings.Contains(string(out), "√ sidecars connected and synced: 2 injected pod(s)") {
			err = fmt.Errorf("the sidecars are not all connected")
		}
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := helm("uninstall", "trellis", "-n", "trellis-system", "--wait", "--timeout", "2m"); err != nil {
		t.Fatal(err)
	}
	if out, err := bed.kubectl(ctx, "delete", "namespace", "trellis-system", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	checkNoTrellis(t, ctx, bed)
}
