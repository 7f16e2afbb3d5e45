package catalog

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// A spec as users write it decodes strictly, inline backendRef fields
// included.
func TestHTTPRouteSpecDecodes(t *testing.T) {
	const spec = `
parentRefs: [{group: "", kind: Service, name: graph, port: 8080}]
rules:
- matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: x-canary, value: "1"}], queryParams: [{name: q, value: a}], method: GET}]
  filters:
  - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: x-c, value: d}], remove: [x-e]}}
  - {type: URLRewrite, urlRewrite: {hostname: h, path: {type: ReplacePrefixMatch, replacePrefixMatch: ""}}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1}}}
  backendRefs:
  - {name: graph-v1, port: 8080, weight: 90, filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}]}
  - {name: graph-v2, namespace: db, port: 8080, weight: 0}
  timeouts: {request: 10s, backendRequest: 500ms}
  retry: {codes: [503], attempts: 2, backoff: 100ms}
`
	var s HTTPRouteSpec
	if err := yaml.UnmarshalStrict([]byte(spec), &s); err != nil {
		t.Fatal(err)
	}
	if g := s.ParentRefs[0].Group; g == nil || *g != "" {
		t.Errorf("parentRefs[0].group = %v, want a pointer to \"\"", g)
	}
	r := s.Rules[0]
	b := r.BackendRefs[1]
	if b.Name != "graph-v2" || b.Namespace != "db" || b.Port != 8080 || b.Weight == nil || *b.Weight != 0 {
		t.Errorf("backendRefs[1] = %+v, want graph-v2 in db, port 8080, weight 0", b)
	}
	if p := r.Filters[1].URLRewrite.Path.ReplacePrefixMatch; p == nil || *p != "" {
		t.Errorf("replacePrefixMatch = %v, want a pointer to \"\"", p)
	}
	if r.Timeouts.BackendRequest != "500ms" || *r.Retry.Attempts != 2 || r.Retry.Codes[0] != 503 {
		t.Errorf("timeouts %+v, retry %+v", r.Timeouts, r.Retry)
	}
	if f := r.Filters[2].RequestMirror.Fraction; f.Numerator != 1 || f.Denominator != nil {
		t.Errorf("fraction = %+v, want 1 over the default", f)
	}
}

func TestRouteSpecRefusesUnknownFields(t *testing.T) {
	for _, tc := range []struct{ name, spec string }{
		{"misspelt field", `rules: [{backendRef: [{name: a, port: 1}]}]`},
		{"gRPC filter of HTTP only", `rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: h}}]}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s GRPCRouteSpec
			err := yaml.UnmarshalStrict([]byte(tc.spec), &s)
			if err == nil || !strings.Contains(err.Error(), "unknown field") {
				t.Errorf("UnmarshalStrict(%s) = %v, want an unknown field error", tc.spec, err)
			}
		})
	}
}
