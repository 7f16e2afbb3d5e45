package cli

import (
	"maps"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	kubeexample "github.com/trellis-mesh/trellis/examples/kubernetes"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/install"
	"github.com/trellis-mesh/trellis/internal/kube"
)

// TestInjectManifest: `trellis inject` injects pods and every kind of pod
// template, passes other objects through unchanged, and injects an
// injected manifest to itself.
func TestInjectManifest(t *testing.T) {
	cfg := inject.Config{ProxyImage: "r/trellis-proxy:v1", ControlPlane: "cp:15012", TrustDomain: "cluster.local", RootPEM: []byte("roots")}
	in := `apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    spec:
      serviceAccountName: web
      containers: [{name: web, image: web:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "@daily"
  jobTemplate: {spec: {template: {spec: {containers: [{name: job, image: job:1}], restartPolicy: Never}}}}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, annotations: {sidecar.istio.io/inject: "false"}}
spec: {containers: [{name: solo, image: solo:1}]}
`
	out, err := injectManifest([]byte(in), "default", cfg)
	if err != nil {
		t.Fatal(err)
	}
	docs := splitYAML(out)[1:] // the stream starts with ---
	if len(docs) != 4 {
		t.Fatalf("%d documents out, want 4:\n%s", len(docs), out)
	}
	var svc map[string]any
	_ = yaml.Unmarshal(docs[0], &svc)
	if spec, _ := yaml.Marshal(svc["spec"]); strings.TrimSpace(string(spec)) != "ports:\n- port: 80" {
		t.Errorf("the Service changed:\n%s", docs[0])
	}
	for i, want := range []string{"spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/default/sa/default"} {
		if d := string(docs[i+1]); !strings.Contains(d, "name: trellis-proxy") || !strings.Contains(d, want) {
			t.Errorf("document %d is not injected as %s:\n%s", i+2, want, d)
		}
	}
	if strings.Contains(string(docs[3]), "trellis-proxy") {
		t.Errorf("the opted-out pod was injected:\n%s", docs[3])
	}
	again, err := injectManifest(out, "default", cfg)
	if err != nil || string(again) != string(out) {
		t.Errorf("injecting the injected manifest changed it (%v):\n%s", err, again)
	}
	if _, err := injectManifest([]byte("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\nspec: {}\n"), "default", cfg); err == nil {
		t.Error("a Deployment without a pod template was accepted")
	}
}

// TestWalkthroughManifests: the demo reads examples/kubernetes as kubectl
// would, and runs every container of it on the image it is given.
func TestWalkthroughManifests(t *testing.T) {
	objs, err := decodeObjects(kubeexample.Walkthrough)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, u := range objs {
		kinds[u.GetKind()]++
		if err := setImage(u, "registry.test/trellis-demo:v1"); err != nil {
			t.Fatal(err)
		}
		path := []string{"spec", "containers"}
		if u.GetKind() == "Deployment" {
			path = []string{"spec", "template", "spec", "containers"}
		}
		cs, _, _ := unstructured.NestedSlice(u.Object, path...)
		for _, c := range cs {
			if img := c.(map[string]any)["image"]; (u.GetKind() == "Pod" || u.GetKind() == "Deployment") && img != "registry.test/trellis-demo:v1" {
				t.Errorf("%s %s runs %v", u.GetKind(), u.GetName(), img)
			}
		}
	}
	want := map[string]int{"Namespace": 3, "Deployment": 3, "Service": 4, "Pod": 2, "VirtualService": 1} // alpha in two versions, each with its Service
	if !maps.Equal(kinds, want) {
		t.Errorf("the walkthrough holds %v, want %v", kinds, want)
	}
	if policy, err := decodeObjects(kubeexample.Policy); err != nil || len(policy) != 1 || policy[0].GetKind() != "NetworkPolicy" {
		t.Errorf("policy.yaml: %v, %v", policy, err)
	}
}

// The names `trellis install` gives objects are those the control plane
// and node agent look for (the two packages cannot import each other).
func TestInstallNamesMatch(t *testing.T) {
	for _, c := range [][2]string{
		{install.NodeAgent, kube.NodeAgent},
		{install.WebhookConfig, kube.WebhookConfigName},
		{install.StatusLease, kube.StatusLeaseName},
	} {
		if c[0] != c[1] {
			t.Errorf("install names %q, the control plane looks for %q", c[0], c[1])
		}
	}
}
