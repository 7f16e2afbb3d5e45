package route

// Istio's VirtualService, translated into the model Gateway API routes
// compile to. What differs from an HTTPRoute, and how:
//
//   - A VirtualService's http routes are tried in order and the first
//     that matches decides, where Gateway API orders rules by how
//     specific their matches are: its Table keeps them in order.
//   - Hosts name the Services it attaches to, on all their ports, and
//     destinations may be in any namespace (Istio has no ReferenceGrant).
//   - A uri prefix is a prefix of the string ("/api" matches "/apis"),
//     not of path segments: it is matched as a regular expression, and a
//     rewrite replaces exactly the prefix.
//   - Durations are Go's ("1.5s", "500ms"), not GEP-2257's.
//   - fault (delays and aborts) has no Gateway API field: rules carry it
//     beside the rest.
//
// Fields outside the subset Trellis applies are refused by name.

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// fault is a rule's fault injection; shares are per million requests.
type fault struct {
	delay       time.Duration
	delayShare  uint64
	abortStatus int // HTTP status of an abort; 0: no abort
	abortGRPC   int // grpc-status of an abort, for gRPC calls
	abortShare  uint64
}

// grpcCodes are the gRPC status names Istio's abort takes.
var grpcCodes = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// checkVS validates and compiles a VirtualService on its own.
func (c *compiler) checkVS(vs *catalog.VirtualService) *checked {
	out := &checked{src: newSource(catalog.KindVirtualService, vs.Meta), ordered: true}
	// The hosts that are Services are its parents, first, so that a
	// refusal has somewhere to be said.
	for i, h := range vs.Spec.Hosts {
		ns, name, ok := hostService(h, vs.Namespace)
		if !ok {
			out.refused = at(fmt.Sprintf("hosts[%d]", i), unsupported("%q is not a Service of the mesh: write its name, name.namespace or name.namespace.svc.cluster.local", h))
			continue
		}
		group := ""
		out.parents = append(out.parents, catalog.ParentReference{Group: &group, Kind: "Service", Namespace: ns, Name: name})
	}
	if err := vsSpecRefusals(vs.Spec); err != nil {
		out.refused = err
	}
	if out.refused != nil {
		return out
	}
	// Istio's VirtualServices often have more http routes than an
	// HTTPRoute may have rules.
	limits := c.limits
	limits.MaxRules = max(limits.MaxRules, maxVSRoutes)
	vc := newCompiler(Config{Services: c.cfg.Services, Limits: limits})
	vc.port = c.port
	for _, p := range out.parents {
		if i := slices.IndexFunc(c.cfg.Services, func(s Service) bool { return s.Namespace == p.Namespace && s.Name == p.Name }); i >= 0 {
			for _, port := range c.cfg.Services[i].Ports {
				vc.parentPorts = append(vc.parentPorts, port.Port)
			}
		}
	}
	vc.checkRules(out, len(vs.Spec.HTTP), func(i int) (*rule, error) {
		return vc.vsRule(vs.Spec.HTTP[i], vs.Namespace)
	})
	for i := range out.refs {
		out.refs[i].msg = istioFields(out.refs[i].msg)
	}
	return out
}

// maxVSRoutes is the most http routes of a VirtualService.
const maxVSRoutes = 64

func vsSpecRefusals(s catalog.VirtualServiceSpec) error {
	switch {
	case len(s.Hosts) == 0:
		return at("hosts", unsupported("name the Service the VirtualService is for"))
	case len(s.TCP) > 0:
		return at("tcp", unsupported("Trellis applies a VirtualService's http routes only: remove it"))
	case len(s.TLS) > 0:
		return at("tls", unsupported("Trellis applies a VirtualService's http routes only: remove it"))
	case len(s.HTTP) == 0:
		return at("http", unsupported("Trellis applies a VirtualService's http routes only: give at least one"))
	case slices.ContainsFunc(s.Gateways, func(g string) bool { return g != "mesh" }):
		return at("gateways", unsupported("Trellis applies VirtualServices to the mesh's sidecars only: leave gateways out, or write [mesh]"))
	case slices.ContainsFunc(s.ExportTo, func(e string) bool { return e != "*" }):
		return at("exportTo", unsupported("Trellis applies a VirtualService as it applies routes (in the Service's namespace to every client, in another to that namespace's clients): leave exportTo out, or write [\"*\"]"))
	}
	return nil
}

// hostService reads a VirtualService host as a Service: "name" (in ns),
// "name.namespace", or "name.namespace.svc" with a cluster domain.
func hostService(h, ns string) (string, string, bool) {
	parts := strings.Split(h, ".")
	switch {
	case strings.ContainsAny(h, "*:/") || slices.Contains(parts, ""):
		return "", "", false
	case len(parts) == 1:
		return ns, parts[0], true
	case len(parts) == 2 || len(parts) >= 3 && parts[2] == "svc":
		return parts[1], parts[0], true
	}
	return "", "", false
}

// vsRule translates one http route into a rule.
func (c *compiler) vsRule(in catalog.VSHTTPRoute, ns string) (*rule, error) {
	if err := vsRouteRefusals(in); err != nil {
		return nil, err
	}
	hr := catalog.HTTPRouteRule{Name: in.Name}
	prefixes := map[string]bool{}
	for i, m := range in.Match {
		hm, prefix, err := vsMatch(m)
		if err != nil {
			return nil, at(fmt.Sprintf("match[%d]", i), err)
		}
		hr.Matches = append(hr.Matches, hm)
		if prefix != nil {
			prefixes[*prefix] = true
		}
	}
	if len(in.Match) == 0 {
		hr.Matches = nil
	}
	if h := in.Headers; h != nil {
		if f := headerFilter(catalog.FilterRequestHeaderModifier, h.Request); f != nil {
			hr.Filters = append(hr.Filters, *f)
		}
		if f := headerFilter(catalog.FilterResponseHeaderModifier, h.Response); f != nil {
			hr.Filters = append(hr.Filters, *f)
		}
	}
	if rd := in.Redirect; rd != nil {
		f := catalog.HTTPRequestRedirectFilter{Scheme: rd.Scheme, Hostname: rd.Authority, Port: int32(rd.Port), StatusCode: rd.RedirectCode}
		if f.StatusCode == 0 {
			f.StatusCode = 301 // Istio's default
		}
		if rd.URI != "" {
			f.Path = &catalog.HTTPPathModifier{Type: catalog.ReplaceFullPath, ReplaceFullPath: &rd.URI}
		}
		hr.Filters = append(hr.Filters, catalog.HTTPRouteFilter{Type: catalog.FilterRequestRedirect, RequestRedirect: &f})
	}
	if rw := in.Rewrite; rw != nil && rw.Authority != "" {
		hr.Filters = append(hr.Filters, catalog.HTTPRouteFilter{Type: catalog.FilterURLRewrite, URLRewrite: &catalog.HTTPURLRewriteFilter{Hostname: rw.Authority}})
	}
	if m := in.Mirror; m != nil {
		ref, err := c.vsTarget(*m, ns)
		if err != nil {
			return nil, at("mirror", err)
		}
		f := &catalog.HTTPRequestMirrorFilter{BackendRef: ref}
		if p := in.MirrorPercentage; p != nil {
			if p.Value < 0 || p.Value > 100 {
				return nil, at("mirrorPercentage.value", unsupported("%g: give a percentage from 0 to 100", p.Value))
			}
			million := int32(1000000)
			f.Fraction = &catalog.Fraction{Numerator: int32(math.Round(p.Value * 10000)), Denominator: &million}
		}
		hr.Filters = append(hr.Filters, catalog.HTTPRouteFilter{Type: catalog.FilterRequestMirror, RequestMirror: f})
	}
	for i, t := range in.Route {
		field := fmt.Sprintf("route[%d]", i)
		ref, err := c.vsTarget(t.Destination, ns)
		if err != nil {
			return nil, at(field+".destination", err)
		}
		b := catalog.HTTPBackendRef{BackendRef: catalog.BackendRef{BackendObjectReference: ref, Weight: t.Weight}}
		if t.Weight == nil && len(in.Route) > 1 {
			return nil, at(field+".weight", unsupported("give every destination a weight when there are several"))
		}
		if h := t.Headers; h != nil {
			for _, f := range []*catalog.HTTPRouteFilter{headerFilter(catalog.FilterRequestHeaderModifier, h.Request),
				headerFilter(catalog.FilterResponseHeaderModifier, h.Response)} {
				if f != nil {
					b.Filters = append(b.Filters, *f)
				}
			}
		}
		hr.BackendRefs = append(hr.BackendRefs, b)
	}
	if len(in.Route) == 0 && in.Redirect == nil {
		return nil, at("route", unsupported("give a destination, or a redirect"))
	}
	r, err := c.httpRule(hr, ns)
	if err != nil {
		return nil, vsField(err)
	}
	if err := r.vsRewrite(in.Rewrite, in.Match, prefixes); err != nil {
		return nil, at("rewrite", err)
	}
	if r.timeouts.Request, err = vsTimeout(in.Timeout); err != nil {
		return nil, at("timeout", err)
	}
	if r.retry, r.timeouts.BackendRequest, err = vsRetries(in.Retries); err != nil {
		return nil, at("retries", err)
	}
	if r.fault, err = vsFault(in.Fault); err != nil {
		return nil, at("fault", err)
	}
	return r, nil
}

// vsField puts an error of the translated rule under the name Istio gives
// the field, where they differ.
func vsField(err error) error {
	e, ok := err.(*invalid)
	if !ok {
		return err
	}
	out := *e
	out.field = istioFields(out.field)
	return &out
}

// gatewayToIstio rewrites the translated rule's Gateway API field names
// into the VirtualService's.
var gatewayToIstio = strings.NewReplacer("matches[", "match[", "backendRefs[", "route[")

// istioFields is text with the translated rule's field names as the
// VirtualService has them: a filter's type says which field it came from.
func istioFields(text string) string {
	text = gatewayToIstio.Replace(text)
	return filterField.ReplaceAllStringFunc(text, func(f string) string {
		_, name, _ := strings.Cut(f, "].")
		switch name {
		case "requestHeaderModifier":
			return "headers.request"
		case "responseHeaderModifier":
			return "headers.response"
		case "requestRedirect":
			return "redirect"
		case "urlRewrite":
			return "rewrite"
		case "requestMirror":
			return "mirror"
		}
		return f
	})
}

// filterField is a filter of the translated rule, by its index and type.
var filterField = regexp.MustCompile(`filters\[\d+\]\.[a-zA-Z]+`)

func vsRouteRefusals(in catalog.VSHTTPRoute) error {
	if field := firstSet(fieldSet{"mirrors", len(in.Mirrors) > 0}, fieldSet{"mirrorPercent", in.MirrorPercent != nil},
		fieldSet{"corsPolicy", in.CorsPolicy != nil}, fieldSet{"delegate", in.Delegate != nil},
		fieldSet{"directResponse", in.DirectResponse != nil}); field != "" {
		return at(field, unsupported("not supported by Trellis: remove it (mirror and mirrorPercentage are)"))
	}
	switch {
	case in.Redirect != nil && len(in.Route) > 0:
		return at("redirect", incompatible("a redirect sends nothing to a destination: remove the route or the redirect"))
	case in.Redirect != nil && in.Rewrite != nil:
		return at("rewrite", incompatible("a redirect sends nothing on, so there is nothing to rewrite: remove the rewrite or the redirect"))
	case in.Redirect != nil && in.Redirect.DerivePort != nil:
		return at("redirect.derivePort", unsupported("not supported by Trellis: give port, or leave it out"))
	case in.Rewrite != nil && in.Rewrite.URIRegexRewrite != nil:
		return at("rewrite.uriRegexRewrite", unsupported("not supported by Trellis: use uri"))
	}
	return nil
}

// fieldSet is whether a field Trellis refuses is set.
type fieldSet struct {
	name string
	set  bool
}

// firstSet is the name of the first field set, "" if none is.
func firstSet(fs ...fieldSet) string {
	for _, f := range fs {
		if f.set {
			return f.name
		}
	}
	return ""
}

// vsMatch translates a match, returning the uri prefix it matches on, if
// that is what it does.
func vsMatch(m catalog.VSMatch) (catalog.HTTPRouteMatch, *string, error) {
	var out catalog.HTTPRouteMatch
	if field := firstSet(fieldSet{"scheme", m.Scheme != nil}, fieldSet{"authority", m.Authority != nil},
		fieldSet{"port", m.Port != nil}, fieldSet{"ignoreUriCase", m.IgnoreURICase != nil},
		fieldSet{"withoutHeaders", m.WithoutHeaders != nil}, fieldSet{"sourceLabels", m.SourceLabels != nil},
		fieldSet{"sourceNamespace", m.SourceNamespace != nil}, fieldSet{"gateways", m.Gateways != nil},
		fieldSet{"statPrefix", m.StatPrefix != nil}); field != "" {
		return out, nil, at(field, unsupported("not supported by Trellis: match on uri, method, headers and queryParams"))
	}
	var prefix *string
	if m.URI != nil {
		typ, v, err := stringMatch(*m.URI, true)
		if err != nil {
			return out, nil, at("uri", err)
		}
		if m.URI.Prefix != nil {
			prefix = m.URI.Prefix
		}
		out.Path = &catalog.HTTPPathMatch{Type: typ, Value: v}
	}
	if m.Method != nil {
		if m.Method.Exact == nil || *m.Method.Exact == "" {
			return out, nil, at("method", unsupported("match a method exactly, as exact: GET"))
		}
		out.Method = *m.Method.Exact
	}
	for _, name := range sortedKeys(m.Headers) {
		typ, v, err := stringMatch(m.Headers[name], false)
		if err != nil {
			return out, nil, at("headers."+name, err)
		}
		out.Headers = append(out.Headers, catalog.HTTPHeaderMatch{Type: typ, Name: name, Value: v})
	}
	for _, name := range sortedKeys(m.QueryParams) {
		typ, v, err := stringMatch(m.QueryParams[name], false)
		if err != nil {
			return out, nil, at("queryParams."+name, err)
		}
		out.QueryParams = append(out.QueryParams, catalog.HTTPQueryParamMatch{Type: typ, Name: name, Value: v})
	}
	return out, prefix, nil
}

// stringMatch is a StringMatch as a Gateway API match type and value: a
// prefix is a regular expression (of the path too: Istio's prefix is of
// the string, not of path segments).
func stringMatch(m catalog.VSStringMatch, path bool) (string, string, error) {
	n := 0
	for _, p := range []*string{m.Exact, m.Prefix, m.Regex} {
		if p != nil {
			n++
		}
	}
	switch {
	case n != 1:
		return "", "", unsupported("give one of exact, prefix or regex")
	case m.Exact != nil:
		return catalog.MatchExact, *m.Exact, nil
	case m.Regex != nil:
		return catalog.MatchRegularExpression, *m.Regex, nil
	case path && !strings.HasPrefix(*m.Prefix, "/"):
		return "", "", at("prefix", unsupported("%q: a path prefix starts with /", *m.Prefix))
	}
	return catalog.MatchRegularExpression, regexp.QuoteMeta(*m.Prefix) + ".*", nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// headerFilter is a header filter of type typ doing ops; nil for none.
func headerFilter(typ string, ops *catalog.VSHeaderOps) *catalog.HTTPRouteFilter {
	if ops == nil || len(ops.Set)+len(ops.Add)+len(ops.Remove) == 0 {
		return nil
	}
	f := &catalog.HTTPHeaderFilter{Remove: ops.Remove}
	for _, k := range sortedKeys(ops.Set) {
		f.Set = append(f.Set, catalog.HTTPHeader{Name: k, Value: ops.Set[k]})
	}
	for _, k := range sortedKeys(ops.Add) {
		f.Add = append(f.Add, catalog.HTTPHeader{Name: k, Value: ops.Add[k]})
	}
	out := &catalog.HTTPRouteFilter{Type: typ}
	if typ == catalog.FilterRequestHeaderModifier {
		out.RequestHeaderModifier = f
	} else {
		out.ResponseHeaderModifier = f
	}
	return out
}

// vsTarget resolves a destination to a Service port: its port, or the
// Service's only one; and its subset, which backendRef checks.
func (c *compiler) vsTarget(t catalog.VSTarget, ns string) (catalog.BackendObjectReference, error) {
	svcNS, name, ok := hostService(t.Host, ns)
	if !ok {
		return catalog.BackendObjectReference{}, at("host", unsupported("%q is not a Service of the mesh: write its name, name.namespace or name.namespace.svc.cluster.local", t.Host))
	}
	ref := catalog.BackendObjectReference{Name: name, Namespace: svcNS, Subset: t.Subset}
	if t.Port != nil {
		ref.Port = int32(t.Port.Number)
		return ref, nil
	}
	i := slices.IndexFunc(c.cfg.Services, func(s Service) bool { return s.Namespace == svcNS && s.Name == name })
	switch {
	case i < 0:
		// backendRef says the Service is missing.
	case len(c.cfg.Services[i].Ports) == 1:
		ref.Port = c.cfg.Services[i].Ports[0].Port
	case c.port != 0:
		ref.Port = c.port // as Istio: the port the request was sent to
	default:
		// For status, which has no request: a port of the parents the
		// destination lacks, so that its requests' 500 is said, else any.
		ref.Port = c.cfg.Services[i].Ports[0].Port
		if len(c.parentPorts) > 0 {
			ref.Port = c.parentPorts[0]
		}
		for _, pp := range c.parentPorts {
			if !slices.ContainsFunc(c.cfg.Services[i].Ports, func(p Port) bool { return p.Port == pp }) {
				ref.Port = pp
				break
			}
		}
	}
	return ref, nil
}

// vsRewrite sets the rule's path rewrite: uri replaces the prefix every
// match matched, when they all matched the same one, or the whole path.
func (r *rule) vsRewrite(rw *catalog.VSRewrite, matches []catalog.VSMatch, prefixes map[string]bool) error {
	if rw == nil || rw.URI == "" {
		return nil
	}
	if err := checkPath(rw.URI); err != nil {
		return at("uri", err)
	}
	switch {
	case len(prefixes) == 0:
		r.rewrite = &pathChange{full: true, value: rw.URI, source: rw.URI}
	case len(prefixes) == 1 && !slices.ContainsFunc(matches, func(m catalog.VSMatch) bool { return m.URI == nil || m.URI.Prefix == nil }):
		for p := range prefixes {
			r.prefix = p
		}
		r.rewrite = &pathChange{value: rw.URI, source: rw.URI}
	default:
		return at("uri", unsupported("the matches are not all the same uri prefix, so what to replace is unclear: split the http route"))
	}
	return nil
}

// vsDuration reads an Istio duration; "" is 0 (none set).
func vsDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond {
		return 0, unsupported("%q: give a duration of at least 1ms, as 500ms or 1.5s", s)
	}
	return d, nil
}

// vsTimeout reads an Istio timeout: "0s" is none (NoTimeout), "" unset.
func vsTimeout(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil && d == 0 {
		return NoTimeout, nil
	}
	return vsDuration(s)
}

// vsRetries translates a retry policy, with its per-try timeout.
func vsRetries(in *catalog.VSRetries) (*Retry, time.Duration, error) {
	if in == nil {
		return nil, 0, nil
	}
	if in.RetryRemoteLocalities != nil {
		return nil, 0, at("retryRemoteLocalities", unsupported("not supported by Trellis: remove it"))
	}
	perTry, err := vsTimeout(in.PerTryTimeout)
	if err != nil {
		return nil, 0, at("perTryTimeout", err)
	}
	out := &Retry{Attempts: defaultAttempts}
	if in.Attempts != nil {
		if *in.Attempts < 0 {
			return nil, 0, at("attempts", unsupported("%d: give 0 (no retries) or more", *in.Attempts))
		}
		if *in.Attempts == 0 {
			return nil, perTry, nil
		}
		out.Attempts = *in.Attempts
	}
	for _, on := range strings.Split(in.RetryOn, ",") {
		switch on = strings.TrimSpace(on); on {
		case "", "connect-failure", "refused-stream", "reset", "retriable-status-codes":
			// Connection failures are always retried (resets only under an
			// idempotent method).
		case "5xx":
			for code := 500; code < 600; code++ {
				out.Codes = append(out.Codes, code)
			}
		case "gateway-error":
			out.Codes = append(out.Codes, 502, 503, 504)
		case "retriable-4xx":
			out.Codes = append(out.Codes, 409)
		case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
			return nil, 0, at("retryOn", unsupported("%q: Trellis retries gRPC calls on connection failures only: remove it", on))
		default:
			code, err := strconv.Atoi(on)
			if err != nil || code < 400 || code > 599 {
				return nil, 0, at("retryOn", unsupported("%q: use 5xx, gateway-error, connect-failure, refused-stream, reset, retriable-4xx or a status from 400 to 599", on))
			}
			out.Codes = append(out.Codes, code)
		}
	}
	slices.Sort(out.Codes)
	out.Codes = slices.Compact(out.Codes)
	return out, perTry, nil
}

// defaultAttempts is Istio's retries when a policy gives none.
const defaultAttempts = 2

// vsFault translates fault injection.
func vsFault(in *catalog.VSFault) (*fault, error) {
	if in == nil {
		return nil, nil
	}
	out := &fault{}
	share := func(p *catalog.VSPercent) (uint64, error) {
		if p == nil {
			return 1000000, nil // Istio: every request
		}
		if p.Value < 0 || p.Value > 100 {
			return 0, at("percentage.value", unsupported("%g: give a percentage from 0 to 100", p.Value))
		}
		return uint64(math.Round(p.Value * 10000)), nil
	}
	var err error
	if d := in.Delay; d != nil {
		switch {
		case d.Percent != nil:
			return nil, at("delay.percent", unsupported("Istio deprecated it: use percentage.value"))
		case d.ExponentialDelay != nil:
			return nil, at("delay.exponentialDelay", unsupported("not supported by Trellis: use fixedDelay"))
		}
		if out.delay, err = vsDuration(d.FixedDelay); err != nil || out.delay == 0 {
			return nil, at("delay.fixedDelay", unsupported("%q: give a delay of at least 1ms, as 500ms", d.FixedDelay))
		}
		if out.delayShare, err = share(d.Percentage); err != nil {
			return nil, at("delay", err)
		}
	}
	if a := in.Abort; a != nil {
		switch {
		case a.HTTP2Error != nil:
			return nil, at("abort.http2Error", unsupported("not supported by Trellis: use httpStatus or grpcStatus"))
		case a.HTTPStatus == 0 && a.GRPCStatus == "":
			return nil, at("abort", unsupported("give httpStatus or grpcStatus"))
		case a.HTTPStatus != 0 && (a.HTTPStatus < 200 || a.HTTPStatus > 599):
			return nil, at("abort.httpStatus", unsupported("%d: give a status from 200 to 599", a.HTTPStatus))
		}
		out.abortStatus, out.abortGRPC = a.HTTPStatus, -1
		if a.GRPCStatus != "" {
			if out.abortGRPC = slices.Index(grpcCodes, a.GRPCStatus); out.abortGRPC <= 0 {
				return nil, at("abort.grpcStatus", unsupported("%q: use the name of an error status, as UNAVAILABLE", a.GRPCStatus))
			}
		}
		if out.abortStatus == 0 {
			out.abortStatus = 503 // what a plain HTTP request gets of a gRPC-only abort
		}
		if out.abortShare, err = share(a.Percentage); err != nil {
			return nil, at("abort", err)
		}
	}
	return out, nil
}
