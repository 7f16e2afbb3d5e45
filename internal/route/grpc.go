package route

import (
	"fmt"
	"regexp"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

func (c *compiler) checkGRPC(rt *catalog.GRPCRoute) *checked {
	out := &checked{src: newSource(catalog.KindGRPCRoute, rt.Meta), grpc: true, parents: rt.Spec.ParentRefs}
	c.checkRules(out, len(rt.Spec.Rules), func(i int) (*rule, error) {
		if len(rt.Spec.Rules) == 0 {
			return c.grpcRule(catalog.GRPCRouteRule{}, rt.Namespace)
		}
		return c.grpcRule(rt.Spec.Rules[i], rt.Namespace)
	})
	return out
}

func (c *compiler) grpcRule(in catalog.GRPCRouteRule, ns string) (*rule, error) {
	if in.SessionPersistence != nil {
		return nil, at("sessionPersistence", unsupported("not supported by Trellis: remove it"))
	}
	r := &rule{}
	var err error
	if r.matches, err = c.grpcMatches(in.Matches); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, f := range in.Filters {
		hf := httpFilter(f)
		if f.Type == catalog.FilterRequestRedirect || f.Type == catalog.FilterURLRewrite {
			return nil, at(fmt.Sprintf("filters[%d].type", i), unsupported("%s is not a GRPCRoute filter: use RequestHeaderModifier, ResponseHeaderModifier or RequestMirror", f.Type))
		}
		if seen[f.Type] && f.Type != catalog.FilterRequestMirror {
			return nil, at(fmt.Sprintf("filters[%d]", i), unsupported("a second %s filter: merge it into the first", f.Type))
		}
		seen[f.Type] = true
		if err := oneField(hf); err != nil {
			return nil, at(fmt.Sprintf("filters[%d]", i), err)
		}
		if err := c.httpFilter(r, hf, nil, ns, fmt.Sprintf("filters[%d]", i)); err != nil {
			return nil, at(fmt.Sprintf("filters[%d]", i), err)
		}
	}
	refs := make([]backendIn, len(in.BackendRefs))
	for i, b := range in.BackendRefs {
		refs[i] = backendIn{ref: b.BackendRef}
		for _, f := range b.Filters {
			refs[i].filters = append(refs[i].filters, httpFilter(f))
		}
	}
	return r, c.backends(r, refs, ns)
}

// httpFilter is a GRPCRoute filter as the HTTPRoute filter it is a subset
// of.
func httpFilter(f catalog.GRPCRouteFilter) catalog.HTTPRouteFilter {
	return catalog.HTTPRouteFilter{Type: f.Type, RequestHeaderModifier: f.RequestHeaderModifier,
		ResponseHeaderModifier: f.ResponseHeaderModifier, RequestMirror: f.RequestMirror, ExtensionRef: f.ExtensionRef}
}

func (c *compiler) grpcMatches(in []catalog.GRPCRouteMatch) ([]match, error) {
	if len(in) > c.limits.MaxMatches {
		return nil, at("matches", unsupported("%d matches, more than %d: split the rule", len(in), c.limits.MaxMatches))
	}
	if len(in) == 0 {
		in = []catalog.GRPCRouteMatch{{}}
	}
	out := make([]match, len(in))
	for i, m := range in {
		if err := c.grpcMatch(&out[i], m); err != nil {
			return nil, at(fmt.Sprintf("matches[%d]", i), err)
		}
	}
	return out, nil
}

// The syntax of exact service and method names, as the CRD has it.
var (
	grpcService = regexp.MustCompile(`^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`)
	grpcMethod  = regexp.MustCompile(`^[A-Za-z_][A-Za-z_0-9]*$`)
)

func (c *compiler) grpcMatch(out *match, in catalog.GRPCRouteMatch) error {
	var err error
	if out.headers, err = c.headerMatches(in.Headers); err != nil {
		return err
	}
	out.anyService, out.anyMethod = true, true
	m := in.Method
	if m == nil {
		return nil
	}
	if m.Service == "" && m.Method == "" {
		return at("method", unsupported("give a service, a method or both"))
	}
	exact := m.Type == "" || m.Type == catalog.MatchExact
	if m.Service != "" {
		if exact && !grpcService.MatchString(m.Service) {
			return at("method.service", unsupported("%q is not a gRPC service name, as trellis.graph.v1.Graph", m.Service))
		}
		if out.service, err = c.value(m.Type, m.Service); err != nil {
			return at("method", err)
		}
		out.anyService = false
	}
	if m.Method != "" {
		if exact && !grpcMethod.MatchString(m.Method) {
			return at("method.method", unsupported("%q is not a gRPC method name, as GetNode", m.Method))
		}
		if out.grpcMethod, err = c.value(m.Type, m.Method); err != nil {
			return at("method", err)
		}
		out.anyMethod = false
	}
	return nil
}
