package inject

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/proxy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.injected.yaml")

var testConfig = Config{ProxyImage: "trellis.local/trellis-proxy:v1", ControlPlane: "trellis-control.trellis-system.svc:15012",
	TrustDomain: "cluster.local", RootPEM: []byte("-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n"),
	Traces: "control-plane", TraceSampling: 1.5}

func loadPod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

// TestGolden pins the injected spec: the redirect step and the native
// sidecar first, the identity volume, the rewritten probes and the
// annotations. Run with -update after a deliberate change, and read the
// diff.
func TestGolden(t *testing.T) {
	pod := loadPod(t, "testdata/pod.yaml")
	if err := Pod(pod, "shop", testConfig); err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("testdata/pod.injected.yaml", got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/pod.injected.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("injected pod differs from testdata/pod.injected.yaml (go test -update to accept):\n%s", got)
	}

	// Injecting the injected pod again changes nothing.
	again := pod.DeepCopy()
	var skipped *Skipped
	if err := Pod(again, "shop", testConfig); !errors.As(err, &skipped) {
		t.Errorf("re-injecting: Pod() = %v, want it skipped", err)
	}
	if b, _ := yaml.Marshal(again); string(b) != string(got) {
		t.Error("re-injecting changed the pod")
	}
}

// TestProbesReachTheProxy: what the injector writes for the sidecar is what
// the proxy reads (the two keep separate types so the proxy links no
// Kubernetes package).
func TestProbesReachTheProxy(t *testing.T) {
	pod := loadPod(t, "testdata/pod.yaml")
	if err := Pod(pod, "shop", testConfig); err != nil {
		t.Fatal(err)
	}
	var env string
	for _, e := range pod.Spec.InitContainers[1].Env {
		if e.Name == ProbesEnv {
			env = e.Value
		}
	}
	var probes map[string]proxy.AppProbe
	if err := json.Unmarshal([]byte(env), &probes); err != nil {
		t.Fatal(err)
	}
	ready, live := probes["/app-health/web/readyz"], probes["/app-health/web/livez"]
	if ready.HTTPGet == nil || ready.HTTPGet.Port != 8080 || ready.HTTPGet.Path != "/ready" || ready.HTTPGet.Headers["X-Probe"] != "1" {
		t.Errorf("readiness probe as the proxy reads it: %+v", ready.HTTPGet)
	}
	if live.TCPPort != 8080 || live.TimeoutSeconds != 2 {
		t.Errorf("liveness probe as the proxy reads it: %+v", live)
	}
	if _, ok := probes["/app-health/web/startupz"]; ok {
		t.Error("an exec probe was moved to the sidecar; it runs in the container")
	}
	if len(probes) != 2 {
		t.Errorf("probes = %v, want readiness and liveness of web", probes)
	}
}

func TestSkipsAndRefusals(t *testing.T) {
	base := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}}}
		mut(p)
		return p
	}
	uid := int64(1337)
	for _, c := range []struct {
		name    string
		pod     *corev1.Pod
		skipped bool
		err     string
	}{
		{"opt-out annotation", base(func(p *corev1.Pod) { p.Annotations = map[string]string{"sidecar.istio.io/inject": "false"} }), true, ""},
		{"opt-out label", base(func(p *corev1.Pod) { p.Labels = map[string]string{"trellis.io/inject": "false"} }), true, ""},
		{"host network", base(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), true, ""},
		{"bad port annotation", base(func(p *corev1.Pod) {
			p.Annotations = map[string]string{"traffic.sidecar.istio.io/excludeOutboundPorts": "80,http"}
		}), false, `"http" is not a port number`},
		{"an IPv6 range to exclude", base(func(p *corev1.Pod) {
			p.Annotations = map[string]string{"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8,fd00::/8"}
		}), false, "only IPv4 ranges"},
		{"a range that is not one", base(func(p *corev1.Pod) {
			p.Annotations = map[string]string{"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"}
		}), false, "write it as 10.0.0.0/8"},
		{"a container named like the sidecar", base(func(p *corev1.Pod) { p.Spec.Containers[0].Name = "trellis-proxy" }), false, "rename it"},
		{"an app running as the sidecar's uid", base(func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: &uid}
		}), false, "bypass the mesh"},
		{"a probe on an unknown named port", base(func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{}}}
			p.Spec.Containers[0].ReadinessProbe.TCPSocket.Port.Type = 1
			p.Spec.Containers[0].ReadinessProbe.TCPSocket.Port.StrVal = "web"
		}), false, `"web" names none of its ports`},
	} {
		before, _ := json.Marshal(c.pod)
		err := Pod(c.pod, "ns", testConfig)
		var skipped *Skipped
		switch {
		case c.skipped && !errors.As(err, &skipped):
			t.Errorf("%s: Pod() = %v, want skipped", c.name, err)
		case !c.skipped && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: Pod() = %v, want an error saying %q", c.name, err, c.err)
		}
		if after, _ := json.Marshal(c.pod); string(after) != string(before) {
			t.Errorf("%s: the pod was changed although not injected", c.name)
		}
	}
}

// TestWorkloadOf: a sidecar names its spans after the pod's workload,
// known at admission only from the pod's generated name.
func TestWorkloadOf(t *testing.T) {
	for _, c := range []struct {
		pod  corev1.Pod
		want string
	}{
		{corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "reviews-v1-7d4b9c5f6-", Labels: map[string]string{"pod-template-hash": "7d4b9c5f6"}}}, "reviews-v1"},
		{corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "db-0-"}}, "db-0"},
		{corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client", Labels: map[string]string{"pod-template-hash": "x"}}}, "client"},
	} {
		if got := workloadOf(&c.pod); got != c.want {
			t.Errorf("workloadOf(%+v) = %q, want %q", c.pod.ObjectMeta, got, c.want)
		}
	}
}
