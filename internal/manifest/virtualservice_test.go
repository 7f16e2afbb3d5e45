package manifest

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/route"
)

// vs is a VirtualService named v in shop with spec (indented two spaces).
func vs(apiVersion, spec string) string {
	return "---\napiVersion: " + apiVersion + "\nkind: VirtualService\nmetadata: {name: v, namespace: shop}\nspec:\n" + spec + "\n"
}

const reviewsVS = `  hosts: [reviews]
  http:
  - name: teapot
    match: [{uri: {prefix: /tea}, headers: {x-canary: {exact: "1"}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews-v2, port: {number: 9080}}}]
  - route:
    - {destination: {host: reviews-v1.shop.svc.cluster.local, port: {number: 9080}}, weight: 90}
    - {destination: {host: reviews-v2, port: {number: 9080}}, weight: 10}
    retries: {attempts: 3, retryOn: "5xx,connect-failure"}
    timeout: 2s`

func TestParseVirtualService(t *testing.T) {
	set, err := parseAndValidate(reviewsMesh + vs(istioV1, reviewsVS))
	if err != nil {
		t.Fatalf("Parse+Validate() error = %v", err)
	}
	all := set.VirtualServices()
	if len(all) != 1 || all[0].Namespace != "shop" || all[0].Name != "v" {
		t.Fatalf("VirtualServices() = %+v, want shop/v", all)
	}
	s := all[0].Spec
	if len(s.Hosts) != 1 || s.Hosts[0] != "reviews" || len(s.HTTP) != 2 {
		t.Fatalf("spec = %+v, want host reviews and two http routes", s)
	}
	first, second := s.HTTP[0], s.HTTP[1]
	if m := first.Match[0]; m.URI == nil || m.URI.Prefix == nil || *m.URI.Prefix != "/tea" || *m.Headers["x-canary"].Exact != "1" {
		t.Errorf("http[0].match[0] = %+v, want uri prefix /tea and header x-canary exact 1", m)
	}
	if f := first.Fault; f == nil || f.Abort == nil || f.Abort.HTTPStatus != 418 || f.Abort.Percentage.Value != 100 {
		t.Errorf("http[0].fault = %+v, want abort 418 to 100 %%", f)
	}
	if r := second.Route; len(r) != 2 || *r[0].Weight != 90 || r[1].Destination.Port.Number != 9080 {
		t.Errorf("http[1].route = %+v, want 90/10 to port 9080", r)
	}
	if r := second.Retries; r == nil || *r.Attempts != 3 || r.RetryOn != "5xx,connect-failure" || second.Timeout != "2s" {
		t.Errorf("http[1] retries %+v, timeout %q; want 3 on 5xx,connect-failure, 2s", r, second.Timeout)
	}
}

// Istio's older versions load as the same object, and one copied from
// `kubectl get -o yaml` loads with its status ignored.
func TestParseVirtualServiceVersions(t *testing.T) {
	for _, v := range []string{"networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"} {
		doc := vs(v, reviewsVS) + "status: {observedGeneration: 2, conditions: [{type: Reconciled, status: \"True\"}]}\n"
		set, err := parseAndValidate(reviewsMesh + doc)
		if err != nil {
			t.Errorf("%s: Parse+Validate() error = %v", v, err)
			continue
		}
		if all := set.VirtualServices(); len(all) != 1 || len(all[0].Spec.HTTP) != 2 {
			t.Errorf("%s: VirtualServices() = %+v, want shop/v with its two http routes", v, all)
		}
	}
}

// A VirtualService that does not decode is a load error naming the file,
// the object and the field: a field Istio does not have, a value of the
// wrong type, an apiVersion Istio does not have, no name.
func TestVirtualServiceLoadErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"misspelt field", vs(istioV1, "  host: [reviews]"),
			`mesh.yaml: VirtualService shop/v: unknown field "host" (check the field names against the VirtualService (networking.istio.io/v1) API)`},
		{"misspelt nested field", vs(istioV1, "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, port: {numbr: 9080}}}]}]"),
			`mesh.yaml: VirtualService shop/v: unknown field "numbr" (check the field names against the VirtualService (networking.istio.io/v1) API)`},
		{"an HTTPRoute field in a VirtualService", vs(istioV1, "  hosts: [reviews]\n  http: [{backendRefs: [{name: reviews}]}]"),
			`mesh.yaml: VirtualService shop/v: unknown field "backendRefs"`},
		{"weight not a number", vs(istioV1, "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}, weight: ninety}]}]"),
			`mesh.yaml: VirtualService shop/v: cannot unmarshal string into Go struct field VSRouteTarget.spec.http.route.weight of type int32`},
		{"a version Istio does not have", vs("networking.istio.io/v2", "  hosts: [reviews]"),
			`mesh.yaml: VirtualService shop/v: apiVersion "networking.istio.io/v2" is not supported; use "networking.istio.io/v1"`},
		{"no name", strings.Replace(vs(istioV1, "  hosts: [reviews]"), "name: v, ", "", 1),
			`mesh.yaml: VirtualService shop/: metadata.name is required`},
		{"too many hosts", vs(istioV1, "  hosts: ["+strings.TrimSuffix(strings.Repeat("reviews, ", 65), ", ")+"]"),
			`mesh.yaml: VirtualService shop/v: spec.hosts: 65 hosts, more than 64: split the VirtualService`},
		{"too many http routes", vs(istioV1, "  hosts: [reviews]\n  http: ["+strings.TrimSuffix(strings.Repeat("{route: [{destination: {host: reviews}}]}, ", 65), ", ")+"]"),
			`mesh.yaml: VirtualService shop/v: spec.http: 65 routes, more than 64: split the VirtualService`},
		{"undeclared namespace", strings.Replace(vs(istioV1, "  hosts: [reviews]"), "namespace: shop", "namespace: nowhere", 1),
			`mesh.yaml: VirtualService nowhere/v: namespace "nowhere" is not declared; add a Namespace document`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseAndValidate(reviewsMesh + tc.yaml)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Parse+Validate() error = %v, want one line starting %q", err, tc.want)
			}
		})
	}
}

// A VirtualService that decodes but asks for what Trellis does not apply
// (a match on sourceLabels), names a subset no DestinationRule defines or
// a Service that does not exist is kept, as an invalid HTTPRoute is: its status says what is
// wrong, and its valid rules apply.
func TestVirtualServiceKeptWhenInvalid(t *testing.T) {
	set, err := parseAndValidate(reviewsMesh + vs(istioV1, `  hosts: [reviews, ghost]
  http:
  - match: [{sourceLabels: {app: web}}]
    route: [{destination: {host: reviews-v2, port: {number: 9080}}}]
  - route: [{destination: {host: reviews-v1, subset: v1, port: {number: 9080}}}]
  - route: [{destination: {host: reviews-v1, port: {number: 9080}}}]`))
	if err != nil {
		t.Fatalf("an invalid but well-formed VirtualService: error %v, want it loaded (its status says what is wrong)", err)
	}
	all := set.VirtualServices()
	if len(all) != 1 {
		t.Fatalf("VirtualServices() = %+v, want the invalid one kept", all)
	}
	cfg := route.Config{}
	for _, svc := range set.Services() {
		s := route.Service{Namespace: svc.Namespace, Name: svc.Name}
		for _, p := range svc.Ports {
			s.Ports = append(s.Ports, route.Port{Name: p.Name, Port: p.Port})
		}
		cfg.Services = append(cfg.Services, s)
	}
	st := route.Validate(route.Routes{VS: all}, cfg)
	if len(st) != 1 || len(st[0].Parents) != 2 {
		t.Fatalf("status = %+v, want one per host", st)
	}
	var got []string
	for _, p := range st[0].Parents {
		for _, c := range p.Conditions {
			if c.Status == catalog.ConditionFalse || c.Type == route.ConditionPartiallyInvalid {
				got = append(got, p.ParentRef.Name+": "+c.Type+"/"+c.Reason+": "+c.Message)
			}
		}
	}
	for _, want := range []string{"reviews: PartiallyInvalid/UnsupportedValue: Dropped Rule(s): http[0].match[0].sourceLabels", `ResolvedRefs/BackendNotFound: http[1].route[0]: Service shop/reviews-v1 has no subset "v1"`,
		"ghost: Accepted/NoMatchingParent"} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Errorf("status:\n%s\nwant %q in it", strings.Join(got, "\n"), want)
		}
	}
}
