package route

import (
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Table is the compiled routes of one Service port for one client
// namespace. It is immutable and safe for concurrent use; a nil Table has
// no routes.
type Table struct {
	target  Target
	grpc    bool    // the routes are GRPCRoutes
	entries []entry // every match of every rule, in precedence order
}

// entry is one match of one rule.
type entry struct {
	r *rule
	m *match
}

// Compile builds the Table of target from the routes attached to it:
// those with a parentRef to the target's Service (group "", kind Service)
// that selects the target's port, from the client namespace's consumer
// routes if it has any and the producer routes otherwise. Routes that
// are not accepted (see Validate) and rules dropped as invalid add
// nothing.
//
// Precedence is the spec's, over every match of every rule. HTTPRoute: an
// Exact path; then a regular expression path (the spec leaves them to the
// implementation; longer patterns first); then a PathPrefix, longer
// first; then a match with a method; then more header matches; then more
// query parameter matches. GRPCRoute: more characters in the service,
// then in the method, then more header matches. Remaining ties go to the
// oldest route (creationTimestamp; none counts as oldest), then to
// "namespace/name" in alphabetical order, then to rule order within the
// route, then to match order within the rule.
func Compile(target Target, rs Routes, cfg Config) *Table {
	t := &Table{target: target}
	port, ok := findPort(cfg.Services, target)
	if !ok {
		return t
	}
	var chosen []*checked
	c := newCompiler(cfg)
	c.port = port.Port
	chosen, t.grpc = attachedRoutes(c, rs, target, port)
	for _, ch := range chosen {
		for _, r := range ch.rules {
			for i := range r.matches {
				t.entries = append(t.entries, entry{r: r, m: &r.matches[i]})
			}
		}
	}
	if len(chosen) == 0 || !chosen[0].ordered {
		slices.SortStableFunc(t.entries, compareEntries)
	}
	return t
}

// attachedRoutes returns the accepted routes the target uses: the client
// namespace's consumer routes if it has any, else the producer routes;
// of those, the GRPCRoutes if there are any (GEP-1294: they win over
// HTTPRoutes), else the HTTPRoutes.
func attachedRoutes(c *compiler, rs Routes, target Target, port Port) (chosen []*checked, grpc bool) {
	var http, rpc []*checked
	for _, rt := range rs.HTTP {
		if ch := c.checkHTTP(rt); ch.accepted() && ch.attaches(target.Namespace, target.Name, port) {
			http = append(http, ch)
		}
	}
	for _, rt := range rs.GRPC {
		if ch := c.checkGRPC(rt); ch.accepted() && ch.attaches(target.Namespace, target.Name, port) {
			rpc = append(rpc, ch)
		}
	}
	var vss []*checked
	for _, vs := range rs.VS {
		if ch := c.checkVS(vs); ch.accepted() && ch.attaches(target.Namespace, target.Name, port) {
			vss = append(vss, ch)
		}
	}
	from := func(chs []*checked, ns string) []*checked {
		return slices.DeleteFunc(slices.Clone(chs), func(ch *checked) bool { return ch.src.ref.Namespace != ns })
	}
	ns := target.Namespace
	if cn := target.ClientNamespace; cn != "" && len(from(http, cn))+len(from(rpc, cn))+len(from(vss, cn)) > 0 {
		ns = cn
	}
	if g := from(rpc, ns); len(g) > 0 {
		return g, true
	}
	if h := from(http, ns); len(h) > 0 {
		return h, false
	}
	// Gateway API routes win; of VirtualServices, the oldest, as Istio
	// takes the first of several for one host.
	v := from(vss, ns)
	if len(v) == 0 {
		return nil, false
	}
	return []*checked{slices.MinFunc(v, func(a, b *checked) int {
		if c := a.src.created.Compare(b.src.created); c != 0 {
			return c
		}
		return strings.Compare(a.src.key, b.src.key)
	})}, false
}

func findPort(svcs []Service, t Target) (Port, bool) {
	for _, s := range svcs {
		if s.Namespace == t.Namespace && s.Name == t.Name {
			i := slices.IndexFunc(s.Ports, func(p Port) bool { return p.Port == t.Port })
			if i >= 0 {
				return s.Ports[i], true
			}
		}
	}
	return Port{}, false
}

// attaches reports whether one of the route's parentRefs selects port of
// Service ns/name.
func (c *checked) attaches(ns, name string, port Port) bool {
	return slices.ContainsFunc(c.parents, func(p catalog.ParentReference) bool {
		return isService(p) && orDefault(p.Namespace, c.src.ref.Namespace) == ns && p.Name == name && selectsPort(p, port)
	})
}

// isService reports whether p names a Service: group "" and kind Service.
func isService(p catalog.ParentReference) bool {
	return p.Group != nil && *p.Group == "" && p.Kind == "Service"
}

// selectsPort: no port and no sectionName select every port; each one
// given must match.
func selectsPort(p catalog.ParentReference, port Port) bool {
	return (p.Port == 0 || p.Port == port.Port) && (p.SectionName == "" || p.SectionName == port.Name)
}

// compareEntries orders entries by precedence, the best first.
func compareEntries(a, b entry) int {
	if c := compareMatches(a, b); c != 0 {
		return c
	}
	sa, sb := a.r.src, b.r.src
	if c := sa.created.Compare(sb.created); c != 0 {
		return c
	}
	if c := strings.Compare(sa.key, sb.key); c != 0 {
		return c
	}
	return a.r.index - b.r.index // then match order: the sort is stable
}

func compareMatches(a, b entry) int {
	ma, mb := a.m, b.m
	if a.r.grpc {
		return cmpDesc(len(ma.service.exact), len(mb.service.exact), len(ma.grpcMethod.exact), len(mb.grpcMethod.exact),
			len(ma.headers), len(mb.headers))
	}
	if ma.kind != mb.kind {
		return int(ma.kind) - int(mb.kind)
	}
	return cmpDesc(len(ma.path.exact), len(mb.path.exact), b2i(ma.method != ""), b2i(mb.method != ""),
		len(ma.headers), len(mb.headers), len(ma.query), len(mb.query))
}

// cmpDesc compares pairs in turn, the larger first.
func cmpDesc(pairs ...int) int {
	for i := 0; i < len(pairs); i += 2 {
		if pairs[i] != pairs[i+1] {
			return pairs[i+1] - pairs[i]
		}
	}
	return 0
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Resilient reports whether a rule of t may ask for a timeout, retries,
// mirrors or a delay (see Decision.Resilient).
func (t *Table) Resilient() bool {
	return t != nil && slices.ContainsFunc(t.entries, func(e entry) bool {
		return e.r.retry != nil || e.r.timeouts != (Timeouts{}) || len(e.r.mirrors) > 0 || e.r.fault != nil && e.r.fault.delay > 0
	})
}

// Backends are the backends t's rules may send to, mirrors included.
func (t *Table) Backends() []Backend {
	var out []Backend
	for _, e := range t.entries {
		for _, b := range e.r.backends {
			out = append(out, b.Backend)
		}
		for _, m := range e.r.mirrors {
			out = append(out, m.Backend)
		}
	}
	return out
}

// Route decides r; it may be called from any goroutine, and never
// panics. rnd is a random number from the caller: it picks the backend by
// weight and which mirrors get a copy. Route does not allocate unless it
// unescapes a query parameter, matches a regular expression against a
// repeated header, rewrites a path prefix, redirects, or mirrors only a
// share of requests.
func (t *Table) Route(r *Request, rnd uint64) Decision {
	if t == nil || len(t.entries) == 0 {
		return Decision{}
	}
	for i := range t.entries {
		e := &t.entries[i]
		if t.grpc && e.m.matchGRPC(r) || !t.grpc && e.m.matchHTTP(r) {
			return t.decide(e.r, r, rnd)
		}
	}
	// The spec: a request no rule matches gets 404.
	d := Decision{Routed: true, Status: 404}
	if r.GRPC {
		d.GRPCStatus = 12 // UNIMPLEMENTED, what gRPC makes of 404
	}
	return d
}

// Share is one backend of a rule with its share of the rule's requests.
type Share struct {
	Backend Backend
	Share   float64 // 0..1
	Invalid bool    // its requests get 500
}

// Explain says what Route does with r whatever the random draw: the rule
// it matches (Route and Rule of the decision) and the share of each of its
// backends. The decision's Status is set when the proxy answers itself:
// 404 when no rule matches, a redirect's code, 500 when the rule has no
// backend to send to. Faults and mirrors are left out.
func (t *Table) Explain(r *Request) (Decision, []Share) {
	if t == nil || len(t.entries) == 0 {
		return Decision{}, nil
	}
	for i := range t.entries {
		e := &t.entries[i]
		if t.grpc && e.m.matchGRPC(r) || !t.grpc && e.m.matchHTTP(r) {
			rl := e.r
			d := Decision{Routed: true, Route: rl.src.ref, Rule: rl.index}
			switch {
			case rl.redirect != nil:
				d.Status = rl.redirect.status
				return d, nil
			case rl.total == 0:
				d.Status = 500
				return d, nil
			}
			return d, rl.shares()
		}
	}
	return t.Route(r, 0), nil
}

// shares are rl's backends with their shares of its requests; none when
// it has no weight to share.
func (rl *rule) shares() []Share {
	if rl.total == 0 {
		return nil
	}
	out := make([]Share, len(rl.backends))
	for i, b := range rl.backends {
		out[i] = Share{Backend: b.Backend, Share: float64(b.weight) / float64(rl.total), Invalid: b.invalid}
	}
	return out
}

func (t *Table) decide(rl *rule, r *Request, rnd uint64) Decision {
	d := Decision{Routed: true, Route: rl.src.ref, Rule: rl.index, Timeouts: rl.timeouts, Retry: rl.retry,
		ResponseHeaders: rl.respHeaders}
	if f := rl.fault; f != nil {
		// Faults come first, as Envoy's fault filter runs before its
		// router; each draws a number of its own.
		if f.abortStatus != 0 && mix(rnd, 1000)%1000000 < f.abortShare {
			d.Status, d.Fault, d.Timeouts, d.Retry = f.abortStatus, true, Timeouts{}, nil
			if r.GRPC && f.abortGRPC >= 0 {
				d.GRPCStatus = f.abortGRPC
			}
			return d
		}
		if f.delay > 0 && mix(rnd, 1001)%1000000 < f.delayShare {
			d.Delay = f.delay
		}
	}
	if rl.redirect != nil {
		d.Status, d.Location = rl.redirect.status, t.location(rl, r)
		if d.Location == "" {
			d.Status = 400 // the Host or path cannot go in a Location header
		}
		return d
	}
	d.Mirrors = rl.pickMirrors(rnd)
	b := rl.pick(rnd)
	if b == nil || b.invalid {
		// The spec: requests a rule would send to an invalid backend, or
		// that a rule has no backend for, get 500; gRPC calls UNAVAILABLE.
		d.Status = 500
		if r.GRPC {
			d.GRPCStatus = 14
		}
		return d
	}
	d.Backend, d.RequestHeaders, d.ResponseHeaders = b.Backend, b.reqHeaders, b.respHeaders
	if rl.rewrite != nil {
		d.Path = rl.rewrite.apply(r.Path, rl.prefix)
	}
	d.Host = rl.rewriteHost
	return d
}

// pick chooses a backend by weight: rnd modulo the total weight falls in
// one backend's range. A backend of weight 0 is never chosen; nil when
// there is nothing to choose.
func (rl *rule) pick(rnd uint64) *backend {
	if rl.total == 0 {
		return nil
	}
	x := rnd % rl.total
	for i := range rl.backends {
		b := &rl.backends[i]
		if x < b.weight {
			return b
		}
		x -= b.weight
	}
	return nil
}

// pickMirrors returns the mirrors this request goes to. Each mirror draws
// its own number from rnd, so its share is independent of the backend
// chosen.
func (rl *rule) pickMirrors(rnd uint64) []Backend {
	if len(rl.mirrors) == len(rl.allMirrors) {
		return rl.allMirrors
	}
	var out []Backend
	for i, m := range rl.mirrors {
		if m.num == m.den || mix(rnd, uint64(i))%m.den < m.num {
			out = append(out, m.Backend)
		}
	}
	return out
}

// mix derives a well-spread number from rnd and i (SplitMix64's
// finaliser).
func mix(rnd, i uint64) uint64 {
	z := rnd + (i+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// location is the Location of a redirect, or "" when the request's Host
// or path cannot be written in one. The spec: the scheme, host and path
// are the request's unless the filter sets them; the port is the
// filter's, else the scheme's well-known port when the filter sets a
// scheme, else the Service port (the mesh's listener); it is left out
// when it is the scheme's default. The query is kept.
func (t *Table) location(rl *rule, r *Request) string {
	rd := rl.redirect
	scheme := orDefault(rd.scheme, orDefault(r.Scheme, "http"))
	host := orDefault(rd.host, hostOnly(r.Host))
	port := rd.port
	switch {
	case port != 0:
	case rd.scheme == "https":
		port = 443
	case rd.scheme == "http":
		port = 80
	default:
		port = t.target.Port
	}
	path := r.Path
	if rd.path != nil {
		path = rd.path.apply(r.Path, rl.prefix)
	}
	if !hostname(host) || !urlSafe(path) || !urlSafe(r.RawQuery) || !strings.HasPrefix(path, "/") {
		return ""
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	b.WriteString(host)
	if !(scheme == "http" && port == 80 || scheme == "https" && port == 443) {
		b.WriteString(":" + strconv.Itoa(int(port)))
	}
	b.WriteString(path)
	if r.RawQuery != "" {
		b.WriteString("?" + r.RawQuery)
	}
	return b.String()
}

// hostOnly is host without its port, and an IPv6 address without
// brackets.
func hostOnly(host string) string {
	if strings.HasPrefix(host, "[") {
		h, _, _ := strings.Cut(host[1:], "]")
		return h
	}
	if strings.Count(host, ":") == 1 {
		h, _, _ := strings.Cut(host, ":")
		return h
	}
	return host
}

// hostname reports whether h is a DNS name or an IP address (IPv6 without
// brackets): nothing that could change the Location's meaning.
func hostname(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_' || c == ':') {
			return false
		}
	}
	return h != ""
}

// urlSafe reports whether s is printable ASCII without spaces, so it can
// go in a header value.
func urlSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// Empty reports whether no route attaches to t's target: Route would
// never route a request.
func (t *Table) Empty() bool { return t == nil || len(t.entries) == 0 }

// AttachedTo is the routes of rs with a parentRef to Service ns/name, on
// any port: all Compile needs for that Service's ports. A caller that
// compiles the tables of many Services gives each its own, and so checks
// each route for the Services it attaches to only.
func (rs Routes) AttachedTo(ns, name string) Routes {
	var out Routes
	to := func(routeNS string, parents []catalog.ParentReference) bool {
		return slices.ContainsFunc(parents, func(p catalog.ParentReference) bool {
			return isService(p) && orDefault(p.Namespace, routeNS) == ns && p.Name == name
		})
	}
	for _, r := range rs.HTTP {
		if to(r.Namespace, r.Spec.ParentRefs) {
			out.HTTP = append(out.HTTP, r)
		}
	}
	for _, r := range rs.GRPC {
		if to(r.Namespace, r.Spec.ParentRefs) {
			out.GRPC = append(out.GRPC, r)
		}
	}
	for _, vs := range rs.VS {
		if slices.ContainsFunc(vs.Spec.Hosts, func(h string) bool {
			hns, hname, ok := hostService(h, vs.Namespace)
			return ok && hns == ns && hname == name
		}) {
			out.VS = append(out.VS, vs)
		}
	}
	return out
}
