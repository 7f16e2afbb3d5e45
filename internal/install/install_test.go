package install

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// TestRBACVerbs lists every permission the control plane and the node
// agent are granted; a new one fails here until it is added to this list
// on purpose (and to docs/kubernetes.md, which explains each).
func TestRBACVerbs(t *testing.T) {
	var got []string
	for scope, rules := range map[string][]rbacv1.PolicyRule{"cluster": ClusterRules(), "namespace": NamespaceRules(),
		"node-cluster": NodeAgentClusterRules(), "node-namespace": NodeAgentNamespaceRules(), "prometheus-cluster": PrometheusClusterRules()} {
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						got = append(got, strings.Join([]string{scope, g, res, v, strings.Join(r.ResourceNames, "|")}, " "))
					}
				}
			}
		}
	}
	slices.Sort(got)
	want := []string{
		"cluster  namespaces get ",
		"cluster  namespaces list ",
		"cluster  namespaces watch ",
		"cluster  pods get ",
		"cluster  pods list ",
		"cluster  pods watch ",
		"cluster  pods/proxy get ",
		"cluster  services get ",
		"cluster  services list ",
		"cluster  services watch ",
		"cluster admissionregistration.k8s.io mutatingwebhookconfigurations get trellis-sidecar-injector",
		"cluster admissionregistration.k8s.io mutatingwebhookconfigurations update trellis-sidecar-injector",
		"cluster authentication.k8s.io tokenreviews create ",
		"cluster discovery.k8s.io endpointslices get ",
		"cluster discovery.k8s.io endpointslices list ",
		"cluster discovery.k8s.io endpointslices watch ",
		"cluster gateway.networking.k8s.io grpcroutes get ",
		"cluster gateway.networking.k8s.io grpcroutes list ",
		"cluster gateway.networking.k8s.io grpcroutes watch ",
		"cluster gateway.networking.k8s.io grpcroutes/status update ",
		"cluster gateway.networking.k8s.io httproutes get ",
		"cluster gateway.networking.k8s.io httproutes list ",
		"cluster gateway.networking.k8s.io httproutes watch ",
		"cluster gateway.networking.k8s.io httproutes/status update ",
		"cluster networking.istio.io destinationrules get ",
		"cluster networking.istio.io destinationrules list ",
		"cluster networking.istio.io destinationrules watch ",
		"cluster networking.istio.io virtualservices get ",
		"cluster networking.istio.io virtualservices list ",
		"cluster networking.istio.io virtualservices watch ",
		"cluster networking.istio.io virtualservices/status update ",
		"cluster networking.trellis.io destinationrules get ",
		"cluster networking.trellis.io destinationrules list ",
		"cluster networking.trellis.io destinationrules watch ",
		"cluster networking.trellis.io virtualservices get ",
		"cluster networking.trellis.io virtualservices list ",
		"cluster networking.trellis.io virtualservices watch ",
		"cluster networking.trellis.io virtualservices/status update ",
		"cluster security.istio.io authorizationpolicies get ",
		"cluster security.istio.io authorizationpolicies list ",
		"cluster security.istio.io authorizationpolicies watch ",
		"cluster security.istio.io peerauthentications get ",
		"cluster security.istio.io peerauthentications list ",
		"cluster security.istio.io peerauthentications watch ",
		"cluster security.istio.io requestauthentications get ",
		"cluster security.istio.io requestauthentications list ",
		"cluster security.istio.io requestauthentications watch ",
		"cluster security.trellis.io authorizationpolicies get ",
		"cluster security.trellis.io authorizationpolicies list ",
		"cluster security.trellis.io authorizationpolicies watch ",
		"cluster security.trellis.io peerauthentications get ",
		"cluster security.trellis.io peerauthentications list ",
		"cluster security.trellis.io peerauthentications watch ",
		"cluster security.trellis.io requestauthentications get ",
		"cluster security.trellis.io requestauthentications list ",
		"cluster security.trellis.io requestauthentications watch ",
		"namespace  secrets create ",
		"namespace  secrets get trellis-ca|cacerts",
		"namespace  secrets update trellis-ca|cacerts",
		"namespace coordination.k8s.io leases create ",
		"namespace coordination.k8s.io leases get trellis-route-status",
		"namespace coordination.k8s.io leases update trellis-route-status",
		"node-cluster  namespaces get ",
		"node-cluster  namespaces list ",
		"node-cluster  namespaces watch ",
		"node-cluster  pods get ",
		"node-cluster  pods list ",
		"node-cluster  pods watch ",
		"node-cluster networking.k8s.io networkpolicies get ",
		"node-cluster networking.k8s.io networkpolicies list ",
		"node-cluster networking.k8s.io networkpolicies watch ",
		"node-namespace apps daemonsets get trellis-node",
		"prometheus-cluster  pods get ",
		"prometheus-cluster  pods list ",
		"prometheus-cluster  pods watch ",
		"prometheus-cluster  pods/proxy get ",
	}
	if !slices.Equal(got, want) {
		t.Errorf("granted:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestValues: -f and --set reach the rendered objects; mistakes name the
// key and the fix.
func TestValues(t *testing.T) {
	v := Defaults()
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, []byte("image:\n  repository: registry.example.com/mesh\ncontrolPlane:\n  replicas: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"image.tag=v9", "trustDomain=example.org"} {
		if err := v.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	out, err := Render(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image: registry.example.com/mesh/trellis-control:v9", "- registry.example.com/mesh/trellis-proxy:v9",
		"replicas: 2", "- example.org"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered install lacks %q", want)
		}
	}
	for _, c := range []struct{ set, want string }{
		{"image.tga=v1", "unknown key; known keys: image.repository"},
		{"controlPlane.replicas=two", "not a number"},
		{"novalue", "write KEY=VALUE"},
	} {
		if err := v.Set(c.set); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: %v, want an error saying %q", c.set, err, c.want)
		}
	}
	bad := Defaults()
	bad.Image.Tag = ""
	if _, err := Render(bad); err == nil || !strings.Contains(err.Error(), "--set image.tag=") {
		t.Errorf("no tag: %v, want the fix named", err)
	}
	// Values that parse but cannot work are refused, naming the key.
	for _, c := range []struct{ set, want string }{
		{"controlPlane.certificateTTL=5s", "controlPlane.certificateTTL"},
		{"controlPlane.certificateTTL=forever", "controlPlane.certificateTTL"},
		{"prometheus.scrapeInterval=500ms", "prometheus.scrapeInterval"},
		{"prometheus.scrapeInterval=10m", "prometheus.scrapeInterval"},
		{"tracing.sampling=101", "tracing.sampling"},
		{"tracing.sampling=-1", "tracing.sampling"},
		{"tracing.endpoint=collector", "tracing.endpoint"},
		{"tracing.endpoint=http://collector:4317", "tracing.endpoint"},
	} {
		w := Defaults()
		w.Image.Tag = "v1"
		if err := w.Set(c.set); err != nil {
			t.Fatalf("--set %s: %v", c.set, err)
		}
		if _, err := Render(w); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: Render() = %v, want an error naming %s", c.set, err, c.want)
		}
	}
	// Prometheus on: its server, and the dashboard reading it.
	on := Defaults()
	on.Image.Tag = "v1"
	for _, s := range []string{"prometheus.enabled=true", "tracing.endpoint=otel.observability:4317", "tracing.sampling=0.5"} {
		if err := on.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	out, err = Render(on)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: trellis-prometheus", "image: docker.io/prom/prometheus:", "- --prometheus\n        - http://trellis-prometheus.trellis-system.svc:9090",
		"- --proxy-traces\n        - otel.observability:4317", "- --proxy-trace-sampling\n        - \"0.5\""} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered install with Prometheus and a collector lacks %q", want)
		}
	}
	if err := os.WriteFile(file, []byte("imagee: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.LoadFile(file); err == nil || !strings.Contains(err.Error(), "imagee") {
		t.Errorf("unknown key in a values file: %v", err)
	}
}

// TestSecurityPolicySchemas: each policy CRD's schema has every field of
// its catalog type, at every depth, and no other, but
// AuthorizationPolicy's provider (CUSTOM's, refused by the API server): a
// field added to the type and not to the schema would be pruned by the
// API server.
func TestSecurityPolicySchemas(t *testing.T) {
	for _, c := range []struct {
		crd map[string]any
		typ reflect.Type
	}{
		{authorizationPolicyCRD(), reflect.TypeFor[catalog.AuthorizationSpec]()},
		{requestAuthenticationCRD(), reflect.TypeFor[catalog.RequestAuthenticationSpec]()},
	} {
		version := c.crd["spec"].(map[string]any)["versions"].([]any)[0].(map[string]any)
		root := version["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
		spec := root["properties"].(map[string]any)["spec"].(map[string]any)
		checkSchema(t, "spec", c.typ, spec)
	}
}

func checkSchema(t *testing.T, path string, typ reflect.Type, schema map[string]any) {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		if typ.Kind() == reflect.Slice {
			schema, _ = schema["items"].(map[string]any)
		}
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return
	}
	props, _ := schema["properties"].(map[string]any)
	var fields []string
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "provider" {
			continue
		}
		fields = append(fields, name)
		sub, ok := props[name].(map[string]any)
		if !ok {
			t.Errorf("schema of %s (%s) has no %s", path, typ.Name(), name)
			continue
		}
		checkSchema(t, path+"."+name, f.Type, sub)
	}
	for name := range props {
		if !slices.Contains(fields, name) {
			t.Errorf("schema of %s has %s, which %s does not", path, name, typ.Name())
		}
	}
}
