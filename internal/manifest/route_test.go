package manifest

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// reviewsMesh has two versions of reviews behind their own Services and
// the Service clients call, as a user writes it for a canary.
const reviewsMesh = `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec:
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
`

const reviewsSplit = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-split
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - path: {type: PathPrefix, value: /reviews}
    backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
`

const reviewsGRPC = `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews-rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, sectionName: grpc}]
  rules:
  - matches: [{method: {service: shop.Reviews, method: List}}]
    backendRefs: [{name: reviews-v2, port: 9090}]
`

func TestParseRoutes(t *testing.T) {
	set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(reviewsMesh + "---" + reviewsSplit + "---" + reviewsGRPC)}})
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if _, err := Validate(set); err != nil {
		t.Fatalf("Validate() error = %v", err)
	}
	hr := set.HTTPRoutes()
	if len(hr) != 1 || hr[0].Namespace != "shop" || hr[0].Name != "reviews-split" {
		t.Fatalf("HTTPRoutes() = %+v, want shop/reviews-split", hr)
	}
	p := hr[0].Spec.ParentRefs[0]
	if p.Group == nil || *p.Group != "" || p.Kind != "Service" || p.Name != "reviews" || p.Port != 9080 {
		t.Errorf("parentRefs[0] = %+v, want Service reviews port 9080 in the core group", p)
	}
	b := hr[0].Spec.Rules[0].BackendRefs
	if len(b) != 2 || b[0].Name != "reviews-v1" || *b[0].Weight != 90 || b[1].Name != "reviews-v2" || *b[1].Weight != 10 {
		t.Errorf("backendRefs = %+v, want reviews-v1 90 and reviews-v2 10", b)
	}
	gr := set.GRPCRoutes()
	if len(gr) != 1 || gr[0].Name != "reviews-rpc" || gr[0].Spec.Rules[0].Matches[0].Method.Method != "List" {
		t.Errorf("GRPCRoutes() = %+v, want shop/reviews-rpc matching List", gr)
	}
}

// The older versions users still write load as the same objects; a
// route copied from `kubectl get -o yaml` loads with its status ignored;
// routes come out by namespace and name whatever the file order.
func TestParseRouteVersions(t *testing.T) {
	doc := reviewsMesh + `---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: zeta, namespace: shop, resourceVersion: "42", generation: 3}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
status:
  parents:
  - parentRef: {group: "", kind: Service, name: reviews}
    controllerName: istio.io/gateway-controller
    conditions: [{type: Accepted, status: "True", reason: Accepted, message: ""}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alpha, namespace: shop}
spec: {}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: GRPCRoute
metadata: {name: old, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
`
	set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(doc)}})
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	var names []string
	for _, r := range set.HTTPRoutes() {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "alpha,zeta" {
		t.Errorf("HTTPRoutes() = %s, want alpha,zeta", got)
	}
	if gr := set.GRPCRoutes(); len(gr) != 1 || gr[0].Name != "old" {
		t.Errorf("GRPCRoutes() = %+v, want shop/old", gr)
	}
}

// A route that does not decode is a load error naming the file, the
// route and the field; one that decodes but is invalid per the Gateway API
// (here: its parent Service and a backend do not exist, a rule is
// refused) loads, and its status says so.
func TestRouteLoadErrors(t *testing.T) {
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
	route := func(apiVersion, spec string) string {
		return "apiVersion: " + apiVersion + "\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n" + spec + "\n"
	}
	const v1 = "gateway.networking.k8s.io/v1"
	for _, tc := range []struct{ name, yaml, want string }{
		{"misspelt field", ns + route(v1, "  rules: [{backendRef: [{name: a, port: 80}]}]"),
			`mesh.yaml: HTTPRoute shop/r: unknown field "backendRef" (check the field names against the HTTPRoute (gateway.networking.k8s.io/v1) API)`},
		{"a GRPCRoute field in an HTTPRoute", ns + route(v1, "  rules: [{matches: [{method: {service: a.B}}]}]"),
			`mesh.yaml: HTTPRoute shop/r: cannot unmarshal object into Go struct field HTTPRouteMatch.spec.rules.matches.method of type string`},
		{"weight not a number", ns + route(v1, "  rules: [{backendRefs: [{name: a, port: 80, weight: ninety}]}]"),
			`mesh.yaml: HTTPRoute shop/r: cannot unmarshal string into Go struct field HTTPBackendRef.spec.rules.backendRefs.BackendRef.weight of type int32`},
		{"Istio's kind under the Gateway API", ns + route("networking.istio.io/v1", "  hosts: [reviews]"),
			`mesh.yaml: HTTPRoute shop/r: apiVersion "networking.istio.io/v1" is not supported; use "gateway.networking.k8s.io/v1"`},
		{"experimental version", ns + route("gateway.networking.k8s.io/v1alpha1", "  parentRefs: []"),
			`mesh.yaml: HTTPRoute shop/r: apiVersion "gateway.networking.k8s.io/v1alpha1" is not supported; use "gateway.networking.k8s.io/v1"`},
		{"name not a DNS label", ns + strings.Replace(route(v1, "  parentRefs: []"), "name: r,", "name: Reviews_Split,", 1),
			`mesh.yaml: HTTPRoute shop/Reviews_Split: metadata.name "Reviews_Split"`},
		{"undeclared namespace", route(v1, "  parentRefs: []"),
			`mesh.yaml: HTTPRoute shop/r: namespace "shop" is not declared; add a Namespace document`},
		{"GRPCRoute typo", ns + "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: shop}\nspec:\n  rule: []\n",
			`mesh.yaml: GRPCRoute shop/g: unknown field "rule" (check the field names against the GRPCRoute (gateway.networking.k8s.io/v1) API)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(tc.yaml)}})
			if err == nil {
				_, err = Validate(set)
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Parse+Validate() error = %v, want one line starting %q", err, tc.want)
			}
		})
	}
	invalid := ns + route(v1, `  parentRefs: [{group: "", kind: Service, name: missing}]
  rules:
  - matches: [{path: {type: Glob, value: /a}}]
  - backendRefs: [{name: nowhere, port: 80}]`)
	set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(invalid)}})
	if err == nil {
		_, err = Validate(set)
	}
	if err != nil {
		t.Fatalf("an invalid but well-formed route: error %v, want it loaded (its status says what is wrong)", err)
	}
	if r := set.Get(catalog.Ref{Kind: catalog.KindHTTPRoute, Namespace: "shop", Name: "r"}); r == nil {
		t.Error("the invalid route was not kept")
	}
}
