package manifest

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

const validMesh = `
apiVersion: v1
kind: Namespace
metadata:
  name: db
  labels: {trellis.io/inject: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: alpha, namespace: db}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: alpha, namespace: db}
spec:
  replicas: 2
  selector: {matchLabels: {app: alpha}}
  template:
    metadata: {labels: {app: alpha}}
    spec:
      serviceAccountName: alpha
      containers:
      - name: server
        image: ignored
        command: [server]
        args: [--port, "9080"]
        env:
        - {name: MODE, value: fast}
        - name: ME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: grpc, containerPort: 9080}
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /health, port: http}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: alpha, namespace: db}
spec:
  selector: {app: alpha}
  ports:
  - {name: grpc, port: 9080, targetPort: grpc, appProtocol: grpc}
  - {name: http, port: 8080, targetPort: 8080}
`

func TestParseValid(t *testing.T) {
	set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(validMesh)}})
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	warnings, err := Validate(set)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Validate() = %v, %v; want no warnings, no error", warnings, err)
	}
	deps := set.Deployments()
	if len(deps) != 1 || deps[0].Replicas != 2 {
		t.Fatalf("Deployments() = %+v, want one with 2 replicas", deps)
	}
	c := deps[0].Template.Spec.Containers[0]
	if got, want := strings.Join(c.Command, " "), "server --port 9080"; got != want {
		t.Errorf("command = %q, want %q", got, want)
	}
	if c.Readiness == nil || c.Readiness.HTTPGet == nil || c.Readiness.HTTPGet.Port != 8080 || c.Readiness.Period.Seconds() != 2 {
		t.Errorf("readiness = %+v, want httpGet on 8080 every 2s", c.Readiness)
	}
	if c.Env[1].FieldPath != "metadata.name" {
		t.Errorf("env[1] = %+v, want fieldRef metadata.name", c.Env[1])
	}
	svc := set.Services()[0]
	pod := &catalog.Pod{Spec: deps[0].Template.Spec}
	if port, ok := svc.Ports[0].ResolveTargetPort(pod); !ok || port != 9080 || svc.Ports[0].AppProtocol != "grpc" {
		t.Errorf("grpc port resolves to %d, %v (appProtocol %q); want 9080, true, grpc", port, ok, svc.Ports[0].AppProtocol)
	}
}

// Each bad manifest gives one line naming the file, the object and the
// problem.
func TestBadManifests(t *testing.T) {
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n"
	pod := func(ports string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: db, labels: {app: a}}\nspec:\n  containers:\n" + ports
	}
	np := func(spec string) string {
		return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: db}\nspec:\n" + spec + "\n"
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown kind", ns + "apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n",
			`mesh.yaml: document 2: unknown kind "Gadget"`},
		{"duplicate name", ns + pod("  - {name: c, command: [x]}\n") + "---\n" + pod("  - {name: c, command: [y]}\n"),
			`mesh.yaml: Pod db/p: duplicate name: already defined in mesh.yaml`},
		{"port clash", ns + pod("  - {name: a, command: [x], ports: [{containerPort: 80}]}\n  - {name: b, command: [y], ports: [{containerPort: 80}]}\n"),
			`mesh.yaml: Pod db/p: container "b": port 80/TCP clashes with container "a"`},
		{"service port clash", ns + "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: db}\nspec:\n  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
			`mesh.yaml: Service db/s: port 80/TCP clashes: declared twice`},
		{"unknown targetPort name", ns + pod("  - {name: c, command: [x], ports: [{name: http, containerPort: 80}]}\n") +
			"---\napiVersion: v1\nkind: Service\nmetadata: {name: alpha, namespace: db}\nspec:\n  selector: {app: a}\n  ports: [{port: 9080, targetPort: grpc}]\n",
			`mesh.yaml: Service db/alpha: port 9080: targetPort "grpc" matches no container port`},
		{"undeclared namespace", pod("  - {name: c, command: [x]}\n"),
			`mesh.yaml: Pod db/p: namespace "db" is not declared; add a Namespace document`},
		{"no command", ns + pod("  - {name: c, image: nginx}\n"),
			`mesh.yaml: Pod db/p: container "c": no command: one-host mode ignores image, so set command (and args)`},
		{"typo in a field", ns + pod("  - {name: c, command: [x], comand: [y]}\n"),
			`mesh.yaml: Pod db/p: unknown field "comand"`},
		{"bad apiVersion", "apiVersion: apps/v1\nkind: Service\nmetadata: {name: s}\n",
			`mesh.yaml: Service default/s: apiVersion "apps/v1" is not supported; use "v1"`},
		{"not yaml", "kind: [\n", `mesh.yaml: `},
		{"policy with a bad CIDR", ns + np("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/99}}]}]"),
			`mesh.yaml: NetworkPolicy db/np: spec.ingress[0].from[0].ipBlock.cidr "10.1.0.0/99" is not a valid CIDR`},
		{"policy except outside its CIDR", ns + np("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.2.0.0/24]}}]}]"),
			`mesh.yaml: NetworkPolicy db/np: spec.egress[0].to[0].ipBlock.except[0] 10.2.0.0/24 is not inside cidr 10.1.0.0/16`},
		{"policy with a bad operator", ns + np("  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}"),
			`mesh.yaml: NetworkPolicy db/np: spec.podSelector.matchExpressions[0]: operator "Equals": use In, NotIn, Exists or DoesNotExist`},
		{"policy endPort without port", ns + np("  podSelector: {}\n  ingress: [{ports: [{endPort: 90}]}]"),
			`mesh.yaml: NetworkPolicy db/np: spec.ingress[0].ports[0].endPort needs a numeric port`},
		{"policy with an unknown port name", ns + np("  podSelector: {}\n  ingress: [{ports: [{port: metrics}]}]"),
			`mesh.yaml: NetworkPolicy db/np: spec.ingress[0].ports[0]: port name "metrics" matches no TCP container port of any pod`},
		{"peer authentication with an unknown mode", ns + "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: db}\nspec: {mtls: {mode: STRICTER}}\n",
			`mesh.yaml: PeerAuthentication db/pa: spec.mtls.mode "STRICTER": use STRICT, PERMISSIVE or UNSET`},
		{"authorization policy CUSTOM", ns + "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: db}\nspec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n",
			`mesh.yaml: AuthorizationPolicy db/ext: spec: action CUSTOM (an external authorizer) is not supported: use ALLOW, DENY or AUDIT`},
		{"authorization policy typo", ns + "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: db}\nspec: {rules: [{from: [{source: {principal: [x]}}]}]}\n",
			`mesh.yaml: AuthorizationPolicy db/a: unknown field "principal" (check the field names against the AuthorizationPolicy API)`},
		{"authorization policy dry-run not a boolean", ns + "apiVersion: security.trellis.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: db, annotations: {istio.io/dry-run: yes please}}\nspec: {}\n",
			`mesh.yaml: AuthorizationPolicy db/a: annotation istio.io/dry-run: "yes please" is not a boolean: write "true" or "false"`},
		{"peer authentication port modes without selector", ns + "apiVersion: security.trellis.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: db}\nspec: {portLevelMtls: {8080: {mode: STRICT}}}\n",
			`mesh.yaml: PeerAuthentication db/pa: spec.portLevelMtls needs a selector (as in Istio)`},
		{"policy peer with ipBlock and selector", ns + np("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]"),
			`mesh.yaml: NetworkPolicy db/np: spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector`},
		{"runAsNonRoot without a user", ns + pod("  - {name: c, command: [x], securityContext: {runAsNonRoot: true}}\n"),
			`mesh.yaml: Pod db/p: container "c": securityContext.runAsNonRoot is true but the container would run as root (uid 0): set securityContext.runAsUser`},
		{"pod runAsNonRoot with container uid 0", ns + pod("  - {name: c, command: [x], securityContext: {runAsUser: 0}}\n  securityContext: {runAsNonRoot: true, runAsUser: 1000}\n"),
			`mesh.yaml: Pod db/p: container "c": securityContext.runAsNonRoot is true but the container would run as root`},
		{"uid outside the pod's range", ns + pod("  - {name: c, command: [x], securityContext: {runAsUser: 70000}}\n"),
			`mesh.yaml: Pod db/p: container "c": securityContext.runAsUser 70000: one-host pods have the ids 0-65535`},
		{"unknown capability", ns + pod("  - {name: c, command: [x], securityContext: {capabilities: {add: [NET_FLY]}}}\n"),
			`mesh.yaml: Pod db/p: container "c": securityContext.capabilities.add: "NET_FLY" is not a Linux capability`},
		{"privileged", ns + pod("  - {name: c, command: [x], securityContext: {privileged: true}}\n"),
			`mesh.yaml: Pod db/p: container "c": securityContext.privileged is not supported in one-host mode; remove it`},
		{"pod sysctls", ns + pod("  - {name: c, command: [x]}\n  securityContext: {sysctls: [{name: net.core.somaxconn, value: '1024'}]}\n"),
			`mesh.yaml: Pod db/p: spec.securityContext.sysctls is not supported in one-host mode; remove it`},
		{"selector disagrees with template", ns + "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: db}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: z}}\n    spec: {containers: [{name: c, command: [x]}]}\n",
			`mesh.yaml: Deployment db/d: spec.selector app=x does not match the template's labels app=z`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(tt.yaml)}})
			if err == nil {
				_, err = Validate(set)
			}
			if err == nil {
				t.Fatalf("Parse+Validate() error = nil, want %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error = %q, want prefix %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error = %q, want one line", err)
			}
		})
	}
}

func TestSecurityContextMerged(t *testing.T) {
	yaml := `apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: db}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 2000, runAsNonRoot: true, supplementalGroups: [3000]}
  containers:
  - name: app
    command: [x]
    securityContext:
      runAsUser: 1001
      readOnlyRootFilesystem: true
      capabilities: {add: [cap_net_bind_service, CHOWN, KILL], drop: [ALL, KILL]}
  - name: plain
    command: [y]
`
	set, err := Parse([]Source{{Name: "m.yaml", Data: []byte(yaml)}})
	if err != nil {
		t.Fatal(err)
	}
	pod := set.Get(catalog.Ref{Kind: catalog.KindPod, Namespace: "db", Name: "p"}).(*catalog.Pod)
	app, plain := pod.Spec.Containers[0].Security, pod.Spec.Containers[1].Security
	if app.UID() != 1001 || app.GID() != 2000 || !app.ReadOnlyRootFilesystem || app.AllowPrivilegeEscalation ||
		!slices.Equal(app.Capabilities, []string{"CHOWN", "NET_BIND_SERVICE"}) || !slices.Equal(app.SupplementalGroups, []int64{3000}) {
		t.Errorf("app security = %+v (uid %d gid %d)", app, app.UID(), app.GID())
	}
	if plain.UID() != 1000 || plain.GID() != 2000 || plain.ReadOnlyRootFilesystem || len(plain.Capabilities) != 0 {
		t.Errorf("plain security = %+v (uid %d gid %d), want the pod's ids and nothing else", plain, plain.UID(), plain.GID())
	}
}

func TestSelectorMatchingNothingWarns(t *testing.T) {
	yaml := "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  selector: {app: ghost}\n  ports: [{port: 80}]\n"
	set, err := Parse([]Source{{Name: "m.yaml", Data: []byte(yaml)}})
	if err != nil {
		t.Fatal(err)
	}
	warnings, err := Validate(set)
	if err != nil {
		t.Fatalf("Validate() error = %v, want a warning only", err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "Service default/s: selector app=ghost matches no pod") {
		t.Errorf("warnings = %q, want one about the selector", warnings)
	}
}

func TestMergeReplaces(t *testing.T) {
	a, _ := Parse([]Source{{Name: "a", Data: []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {v: '1'}}\n")}})
	b, _ := Parse([]Source{{Name: "b", Data: []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {v: '2'}}\n")}})
	a.Merge(b)
	if ns := a.Namespaces(); len(ns) != 1 || ns[0].Labels["v"] != "2" {
		t.Errorf("after Merge, namespaces = %+v, want one with v=2", ns)
	}
}

// FuzzParse: no input makes Parse or Validate panic or hang.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validMesh))
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, targetPort: x}]\n"))
	f.Add([]byte("---\n---\nkind: Pod\n"))
	f.Add([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: In, values: [b]}]}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}]}]\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}`))
	f.Add([]byte(reviewsMesh + "---" + reviewsSplit + "---" + reviewsGRPC))
	f.Add([]byte(reviewsMesh + dr(istioV1, "  host: reviews.shop\n  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}, outlierDetection: {baseEjectionTime: 1s, consecutiveErrors: 0}}")))
	f.Add([]byte(reviewsMesh + vs(istioV1, reviewsVS)))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse([]Source{{Name: "f.yaml", Data: data}})
		if err != nil {
			return
		}
		_, _ = Validate(set)
	})
}
