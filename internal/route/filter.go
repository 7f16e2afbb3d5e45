package route

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// rule is a compiled rule: its matches and what happens to the requests
// they match.
type rule struct {
	src   *source
	index int
	grpc  bool

	matches []match
	// prefix is the rule's one PathPrefix match, without its trailing
	// "/", when a filter replaces the prefix it matched.
	prefix string

	reqHeaders, respHeaders HeaderOps
	rewrite                 *pathChange // URLRewrite
	rewriteHost             string
	redirect                *redirect
	mirrors                 []mirror
	// allMirrors is every mirror's backend when each mirrors every
	// request: the decision shares it instead of building a list.
	allMirrors []Backend

	backends []backend
	total    uint64 // the sum of the weights, invalid backends' included
	timeouts Timeouts
	retry    *Retry
	fault    *fault // VirtualService only
}

// backend is one backendRef. An invalid one keeps its weight: the requests
// it draws get 500.
type backend struct {
	Backend
	weight  uint64
	invalid bool
	// reqHeaders and respHeaders are the rule's changes followed by the
	// backend's own.
	reqHeaders, respHeaders HeaderOps
}

type mirror struct {
	Backend
	num, den uint64 // the share of requests mirrored
}

// pathChange is a ReplaceFullPath or ReplacePrefixMatch.
type pathChange struct {
	full   bool
	value  string // for a prefix, without its trailing "/"
	source string // as written, for printing
}

type redirect struct {
	scheme, host string
	path         *pathChange
	port         int32
	status       int
}

// backendIn is a backendRef of either route kind, with its filters as an
// HTTPRoute's.
type backendIn struct {
	ref     catalog.BackendRef
	filters []catalog.HTTPRouteFilter
}

func (c *compiler) backends(r *rule, in []backendIn, ns string) error {
	if len(in) > c.limits.MaxBackends {
		return at("backendRefs", unsupported("%d backends, more than %d", len(in), c.limits.MaxBackends))
	}
	for i, b := range in {
		field := fmt.Sprintf("backendRefs[%d]", i)
		out := backend{weight: 1, reqHeaders: r.reqHeaders, respHeaders: r.respHeaders}
		if w := b.ref.Weight; w != nil {
			if *w < 0 || *w > 1000000 {
				return at(field+".weight", unsupported("%d: give a weight from 0 to 1000000", *w))
			}
			out.weight = uint64(*w)
		}
		var err error
		if out.Backend, out.invalid, err = c.backendRef(field, b.ref.BackendObjectReference, ns); err != nil {
			return at(field, err)
		}
		if err := c.backendFilters(&out, b.filters); err != nil {
			return at(field, err)
		}
		r.backends = append(r.backends, out)
		r.total += out.weight
	}
	return nil
}

// backendRef resolves a reference to a Service port. A reference the spec
// calls invalid (unknown kind, missing Service, another namespace) is
// recorded as a ResolvedRefs problem and reported as invalid; a malformed
// one is an error.
func (c *compiler) backendRef(field string, ref catalog.BackendObjectReference, ns string) (Backend, bool, error) {
	if ref.Name == "" {
		return Backend{}, false, at("name", unsupported("name the backend Service"))
	}
	out := Backend{Namespace: ref.Namespace, Name: ref.Name, Port: ref.Port, Subset: ref.Subset}
	if out.Namespace == "" {
		out.Namespace = ns
	}
	bad := func(reason, format string, a ...any) (Backend, bool, error) {
		effect := " (its share of requests gets 500)"
		if strings.HasSuffix(field, "requestMirror.backendRef") {
			effect = " (the mirror is dropped)"
		}
		c.refs = append(c.refs, refProblem{reason: reason, msg: field + ": " + fmt.Sprintf(format, a...) + effect})
		return out, true, nil
	}
	if kind := orDefault(ref.Kind, "Service"); ref.Group != "" || kind != "Service" {
		return bad(ReasonInvalidKind, "kind %q of group %q: a backend is a Service (group \"\")", kind, ref.Group)
	}
	if ref.Port == 0 {
		return Backend{}, false, at("port", unsupported("a Service backend needs its port: add the Service port number"))
	}
	i := slices.IndexFunc(c.cfg.Services, func(s Service) bool { return s.Namespace == out.Namespace && s.Name == out.Name })
	if i < 0 {
		return bad(ReasonBackendNotFound, "Service %s/%s does not exist", out.Namespace, out.Name)
	}
	svc := &c.cfg.Services[i]
	if !slices.ContainsFunc(svc.Ports, func(p Port) bool { return p.Port == ref.Port }) {
		return bad(ReasonBackendNotFound, "Service %s/%s has no port %d (it has %s)", out.Namespace, out.Name, ref.Port, portList(svc.Ports))
	}
	if out.Subset != "" && !slices.Contains(svc.Subsets, out.Subset) {
		if svc.Rule == "" {
			return bad(ReasonBackendNotFound, "Service %s/%s has no subset %q: no DestinationRule for it defines subsets; "+
				"add one with subset %s in spec.subsets", out.Namespace, out.Name, out.Subset, out.Subset)
		}
		return bad(ReasonBackendNotFound, "Service %s/%s has no subset %q: add it to spec.subsets of DestinationRule %s",
			out.Namespace, out.Name, out.Subset, svc.Rule)
	}
	return out, false, nil
}

func portList(ps []Port) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p.Port))
	}
	return strings.Join(s, ", ")
}

// orDefault is v, or def when v is empty.
func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// backendFilters compiles a backendRef's own filters: header changes
// only, each type once (as on a rule).
func (c *compiler) backendFilters(b *backend, fs []catalog.HTTPRouteFilter) error {
	seen := map[string]bool{}
	for i, f := range fs {
		field := fmt.Sprintf("filters[%d]", i)
		if err := oneField(f); err != nil {
			return at(field, err)
		}
		if seen[f.Type] {
			return at(field, unsupported("a second %s filter: merge it into the first", f.Type))
		}
		seen[f.Type] = true
		var ops HeaderOps
		var err error
		switch f.Type {
		case catalog.FilterRequestHeaderModifier:
			ops, err = c.headerFilter(f.RequestHeaderModifier)
			b.reqHeaders = append(slices.Clip(b.reqHeaders), ops...)
		case catalog.FilterResponseHeaderModifier:
			ops, err = c.headerFilter(f.ResponseHeaderModifier)
			b.respHeaders = append(slices.Clip(b.respHeaders), ops...)
		default:
			err = at("type", unsupported("%q on a backendRef: Trellis supports only RequestHeaderModifier and ResponseHeaderModifier there; move the filter to the rule", f.Type))
		}
		if err != nil {
			return at(field, err)
		}
	}
	return nil
}

// httpFilters compiles a rule's filters into r.
func (c *compiler) httpFilters(r *rule, in catalog.HTTPRouteRule, ns string) error {
	seen := map[string]bool{}
	for i, f := range in.Filters {
		field := fmt.Sprintf("filters[%d]", i)
		if err := oneField(f); err != nil {
			return at(field, err)
		}
		if seen[f.Type] && f.Type != catalog.FilterRequestMirror {
			return at(field, unsupported("a second %s filter: merge it into the first", f.Type))
		}
		seen[f.Type] = true
		if err := c.httpFilter(r, f, in.Matches, ns, field); err != nil {
			return at(field, err)
		}
	}
	if seen[catalog.FilterRequestRedirect] && seen[catalog.FilterURLRewrite] {
		return at("filters", incompatible("RequestRedirect and URLRewrite together: a redirected request is not forwarded, so keep one of them"))
	}
	return nil
}

// httpFilter compiles filter f, at field, into r.
func (c *compiler) httpFilter(r *rule, f catalog.HTTPRouteFilter, matches []catalog.HTTPRouteMatch, ns, field string) error {
	var err error
	switch f.Type {
	case catalog.FilterRequestHeaderModifier:
		r.reqHeaders, err = c.headerFilter(f.RequestHeaderModifier)
		return at("requestHeaderModifier", err)
	case catalog.FilterResponseHeaderModifier:
		r.respHeaders, err = c.headerFilter(f.ResponseHeaderModifier)
		return at("responseHeaderModifier", err)
	case catalog.FilterRequestMirror:
		return at("requestMirror", c.mirror(r, f.RequestMirror, ns, field+".requestMirror.backendRef"))
	case catalog.FilterURLRewrite:
		u := f.URLRewrite
		if u.Hostname != "" && !preciseHostname.MatchString(u.Hostname) {
			return at("urlRewrite.hostname", unsupported("%q is not a hostname: write it in lower case, as graph.db.svc.cluster.local", u.Hostname))
		}
		r.rewriteHost = u.Hostname
		r.rewrite, err = r.pathChange(u.Path, matches)
		return at("urlRewrite.path", err)
	case catalog.FilterRequestRedirect:
		r.redirect, err = r.compileRedirect(f.RequestRedirect, matches)
		return at("requestRedirect", err)
	}
	return at("type", unsupported("%q: Trellis supports RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect and URLRewrite", f.Type))
}

// oneField checks that the field Type names is set, and no other.
func oneField(f catalog.HTTPRouteFilter) error {
	set := map[string]bool{
		catalog.FilterRequestHeaderModifier:  f.RequestHeaderModifier != nil,
		catalog.FilterResponseHeaderModifier: f.ResponseHeaderModifier != nil,
		catalog.FilterRequestMirror:          f.RequestMirror != nil,
		catalog.FilterRequestRedirect:        f.RequestRedirect != nil,
		catalog.FilterURLRewrite:             f.URLRewrite != nil,
		catalog.FilterExtensionRef:           f.ExtensionRef != nil,
		catalog.FilterCORS:                   f.CORS != nil,
		catalog.FilterExternalAuth:           f.ExternalAuth != nil,
	}
	switch f.Type {
	case catalog.FilterExtensionRef, catalog.FilterCORS, catalog.FilterExternalAuth:
		return at("type", unsupported("%s filters are not supported by Trellis: remove the filter", f.Type))
	}
	if _, known := set[f.Type]; !known {
		return at("type", unsupported("%q: use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect or URLRewrite", f.Type))
	}
	for t, ok := range set {
		if ok != (t == f.Type) {
			return unsupported("type %s: set its own field (%s) and no other", f.Type, lowerFirst(f.Type))
		}
	}
	return nil
}

func lowerFirst(s string) string {
	if s == "URLRewrite" {
		return "urlRewrite"
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// hopHeaders are the headers a filter may not change: they frame the
// message or the connection, and Host is the URLRewrite filter's.
var hopHeaders = []string{"Connection", "Content-Length", "Host", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// meshHeader reports whether the mesh itself sets or reads header cn (in
// canonical form) between sidecars: the caller's identity and metadata,
// the trace context, the proxy's response flags. A route may not forge
// or drop them.
func meshHeader(cn string) bool {
	switch cn {
	case "X-Forwarded-Client-Cert", "Traceparent", "Tracestate", "B3":
		return true
	}
	return strings.HasPrefix(cn, "X-Trellis-") || strings.HasPrefix(cn, "X-B3-")
}

// headerFilter compiles a header modifier: set, add, then remove; one
// action per name.
func (c *compiler) headerFilter(f *catalog.HTTPHeaderFilter) (HeaderOps, error) {
	var out HeaderOps
	names := map[string]string{}
	add := func(field string, i int, action HeaderAction, name, val string) error {
		field = fmt.Sprintf("%s[%d]", field, i)
		cn := canonical(name)
		switch {
		case !headerName.MatchString(name):
			return at(field, unsupported("%q is not a header name: letters, digits and -", name))
		case slices.Contains(hopHeaders, cn):
			return at(field, unsupported("%s cannot be changed by a filter (it frames the message or names the host: use urlRewrite.hostname for Host)", cn))
		case meshHeader(cn):
			return at(field, unsupported("%s is the mesh's own (identity, trace context or response flags): a route cannot change it", cn))
		case names[cn] != "":
			return at(field, unsupported("%s already has an action in %s: one action per header", cn, names[cn]))
		case action != HeaderRemove && !headerValue(val):
			return at(field, unsupported("the value of %s must be 1 to 4096 printable characters", cn))
		}
		names[cn] = field
		out = append(out, HeaderOp{Action: action, Name: cn, Value: val})
		return nil
	}
	for i, n := range []int{len(f.Set), len(f.Add), len(f.Remove)} {
		if n > c.limits.MaxHeaderChanges {
			return nil, at([]string{"set", "add", "remove"}[i], unsupported("%d headers, more than %d", n, c.limits.MaxHeaderChanges))
		}
	}
	for i, h := range f.Set {
		if err := add("set", i, HeaderSet, h.Name, h.Value); err != nil {
			return nil, err
		}
	}
	for i, h := range f.Add {
		if err := add("add", i, HeaderAdd, h.Name, h.Value); err != nil {
			return nil, err
		}
	}
	for i, name := range f.Remove {
		if err := add("remove", i, HeaderRemove, name, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// headerValue reports whether v is a header value: printable ASCII,
// with single spaces or tabs inside.
func headerValue(v string) bool {
	if v == "" || len(v) > 4096 || v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t' {
		return false
	}
	for i := 0; i < len(v); i++ {
		if b := v[i]; (b < '!' || b > '~') && b != ' ' && b != '\t' {
			return false
		}
	}
	return true
}

func (c *compiler) mirror(r *rule, m *catalog.HTTPRequestMirrorFilter, ns, field string) error {
	out := mirror{num: 100, den: 100}
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return unsupported("percent and fraction: give one of them")
	case m.Percent != nil:
		if *m.Percent < 0 || *m.Percent > 100 {
			return at("percent", unsupported("%d: give 0 to 100", *m.Percent))
		}
		out.num = uint64(*m.Percent)
	case m.Fraction != nil:
		den := int32(100)
		if m.Fraction.Denominator != nil {
			den = *m.Fraction.Denominator
		}
		if den < 1 || m.Fraction.Numerator < 0 || m.Fraction.Numerator > den {
			return at("fraction", unsupported("%d/%d: the numerator is 0 to the denominator, which is at least 1", m.Fraction.Numerator, den))
		}
		out.num, out.den = uint64(m.Fraction.Numerator), uint64(den)
	}
	b, bad, err := c.backendRef(field, m.BackendRef, ns)
	if err != nil || bad {
		return at("backendRef", err) // the spec: an invalid mirror is dropped, and ResolvedRefs says why
	}
	out.Backend = b
	r.mirrors = append(r.mirrors, out)
	if out.num == out.den && len(r.allMirrors) == len(r.mirrors)-1 {
		r.allMirrors = append(r.allMirrors, b)
	}
	return nil
}

// preciseHostname is a DNS name without wildcard, as the CRD has it.
var preciseHostname = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func (r *rule) compileRedirect(f *catalog.HTTPRequestRedirectFilter, matches []catalog.HTTPRouteMatch) (*redirect, error) {
	out := &redirect{scheme: f.Scheme, host: f.Hostname, port: f.Port, status: f.StatusCode}
	if f.Scheme != "" && f.Scheme != "http" && f.Scheme != "https" {
		return nil, at("scheme", unsupported("%q: use http or https", f.Scheme))
	}
	if f.Hostname != "" && (len(f.Hostname) > 253 || !preciseHostname.MatchString(f.Hostname)) {
		return nil, at("hostname", unsupported("%q is not a hostname: write it in lower case, as graph.db.svc.cluster.local", f.Hostname))
	}
	if f.Port < 0 || f.Port > 65535 {
		return nil, at("port", unsupported("%d is not a port", f.Port))
	}
	if out.status == 0 {
		out.status = 302
	}
	if !slices.Contains([]int{301, 302, 303, 307, 308}, out.status) {
		return nil, at("statusCode", unsupported("%d: use 301, 302, 303, 307 or 308", out.status))
	}
	var err error
	out.path, err = r.pathChange(f.Path, matches)
	return out, at("path", err)
}

// pathChange compiles a path modifier. ReplacePrefixMatch needs the rule
// to have exactly one match, a PathPrefix one, whose prefix it replaces.
func (r *rule) pathChange(p *catalog.HTTPPathModifier, matches []catalog.HTTPRouteMatch) (*pathChange, error) {
	if p == nil {
		return nil, nil
	}
	switch {
	case p.Type == catalog.ReplaceFullPath && p.ReplaceFullPath != nil && p.ReplacePrefixMatch == nil:
		return &pathChange{full: true, value: *p.ReplaceFullPath, source: *p.ReplaceFullPath}, at("replaceFullPath", checkPath(*p.ReplaceFullPath))
	case p.Type == catalog.ReplacePrefixMatch && p.ReplacePrefixMatch != nil && p.ReplaceFullPath == nil:
	case p.Type == catalog.ReplaceFullPath || p.Type == catalog.ReplacePrefixMatch:
		return nil, unsupported("type %s: set %s and nothing else", p.Type, lowerFirst(p.Type))
	default:
		return nil, at("type", unsupported("%q: use ReplaceFullPath or ReplacePrefixMatch", p.Type))
	}
	v := *p.ReplacePrefixMatch
	if v != "" {
		if err := checkPath(v); err != nil {
			return nil, at("replacePrefixMatch", err)
		}
	}
	if len(matches) != 1 || matches[0].Path == nil || orDefault(matches[0].Path.Type, catalog.MatchPathPrefix) != catalog.MatchPathPrefix {
		return nil, unsupported("ReplacePrefixMatch needs the rule to have exactly one match, with a PathPrefix path: split the rule or use ReplaceFullPath")
	}
	r.prefix = strings.TrimSuffix(orDefault(matches[0].Path.Value, "/"), "/")
	return &pathChange{value: strings.TrimSuffix(v, "/"), source: v}, nil
}

// apply returns the new path for path, which the rule's prefix matched.
// Whole segments are replaced and a trailing "/" kept, as the spec's
// table shows: /foo/bar with prefix /foo and replacement /xyz is /xyz/bar;
// /foo with replacement "" is /.
func (p *pathChange) apply(path, prefix string) string {
	if p.full {
		return p.value
	}
	out := p.value + path[len(prefix):]
	if out == "" {
		return "/"
	}
	return out
}
