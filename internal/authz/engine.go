package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Request is what a decision looks at: the peer as mTLS proved it, the
// connection's addresses and, for HTTP, the request on its normalised path.
type Request struct {
	// HTTP is false for a TCP connection: rules with HTTP-only fields
	// then match nothing.
	HTTP bool
	// Principal is the peer's SPIFFE ID without "spiffe://"
	// (cluster.local/ns/NS/sa/SA); empty without mTLS (PERMISSIVE).
	Principal string
	// Namespace is the peer's namespace, from its principal.
	Namespace string
	// SourceIP is the connection's peer address; RemoteIP the original
	// client's (from X-Forwarded-For when trusted), else SourceIP.
	SourceIP, RemoteIP netip.Addr
	DestIP             netip.Addr
	DestPort           int
	SNI                string
	Host, Method, Path string
	// Header returns a request header's values (nil for none).
	Header func(name string) []string
	// Auth is the request's verified JWT, nil without one.
	Auth *Auth
}

// Auth is a request's verified JWT.
type Auth struct {
	Principal string // iss/sub
	Audiences []string
	Presenter string // azp
	Claims    map[string]any
}

// Workload is the destination the engine decides for.
type Workload struct {
	Namespace string
	Labels    map[string]string
	// Services are the names of the Services (in Namespace) that select
	// the workload, for policies' targetRefs.
	Services []string
}

// Decision is the outcome for one request.
type Decision struct {
	Allowed bool
	// Policy is "namespace/name" of the policy that decided: the DENY
	// that matched, or the ALLOW that matched; empty when no policy
	// applied, or when ALLOW policies applied and none matched.
	Policy string
	// Rule is the index, in Policy's rules, of the rule that matched;
	// meaningful only when Policy is set.
	Rule int
	// Action is DENY when a DENY policy decided, ALLOW when ALLOW policies
	// did (the one that matched, or none matching); empty when no policy
	// applied.
	Action Action
	// Audited lists the AUDIT policies that matched.
	Audited []string
	// DryRun, when dry-run policies apply, is the decision had they been
	// enforced (what Istio's shadow rules report).
	DryRun *Decision
}

// Engine decides for one workload. It is immutable and safe for
// concurrent use.
type Engine struct {
	deny, allow, audit []compiled
	// shadow decides with the dry-run policies enforced too; nil when
	// none applies.
	shadow *Engine
}

type compiled struct {
	name   string
	action Action
	rules  []rule
}

// rule is a compiled rule. httpOnly marks one that uses an HTTP-only
// field; for a TCP connection such a rule matches nothing in an ALLOW or
// AUDIT policy, and in a DENY policy it is tcp, the rule without its
// HTTP-only fields (Istio's way: a DENY rule never gets narrower, so it
// denies more).
type rule struct {
	match, tcp func(*Request) bool
	httpOnly   bool
}

// Select picks the policies that apply to w: its namespace's and, as
// mesh-wide ones, those of the root namespaces; narrowed by selector or
// targetRefs. A policy whose scope is invalid is an error naming it.
func Select(policies []Policy, w Workload, roots []string) ([]Policy, error) {
	var out []Policy
	for _, p := range policies {
		applies, err := appliesTo(p, w, roots)
		if err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s/%s: %w", p.Namespace, p.Name, err)
		}
		if applies {
			out = append(out, p)
		}
	}
	return out, nil
}

// Compile compiles policies already selected for one workload. A policy
// that cannot be compiled is an error naming it and its field: nothing is
// half-applied.
func Compile(policies []Policy) (*Engine, error) {
	e, dry := &Engine{}, &Engine{}
	for _, p := range policies {
		c, err := compilePolicy(p)
		if err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s/%s: %w", p.Namespace, p.Name, err)
		}
		into := e
		if p.DryRun {
			into = dry
		}
		switch c.action {
		case Deny:
			into.deny = append(into.deny, c)
		case Allow:
			into.allow = append(into.allow, c)
		case Audit:
			into.audit = append(into.audit, c)
		}
	}
	if len(dry.deny)+len(dry.allow) > 0 {
		e.shadow = &Engine{deny: append(slices.Clip(e.deny), dry.deny...), allow: append(slices.Clip(e.allow), dry.allow...)}
	}
	return e, nil
}

// Check validates a policy without a workload: what Compile would refuse.
func Check(p Policy) error {
	if _, err := appliesTo(p, Workload{Namespace: p.Namespace}, nil); err != nil {
		return err
	}
	_, err := compilePolicy(p)
	return err
}

func appliesTo(p Policy, w Workload, roots []string) (bool, error) {
	return Scope{Namespace: p.Namespace, Selector: p.Spec.Selector, TargetRefs: p.Spec.TargetRefs}.Applies(w, roots)
}

// Scope is where an Istio security policy (AuthorizationPolicy,
// RequestAuthentication) applies: its namespace, narrowed by a selector
// or by targetRefs.
type Scope struct {
	Namespace  string
	Selector   *Selector
	TargetRefs []TargetRef
}

// Applies reports whether the scope covers w: the policy is in w's
// namespace or in a root namespace (mesh-wide), and its selector matches
// w's labels or its targetRefs name a Service selecting w (targetRefs
// only within the policy's own namespace). An invalid scope is an error.
func (s Scope) Applies(w Workload, roots []string) (bool, error) {
	if s.Selector != nil && len(s.TargetRefs) > 0 {
		return false, errors.New("selector and targetRefs: give one of them")
	}
	for _, ref := range s.TargetRefs {
		if ref.Kind != "Service" || (ref.Group != "" && ref.Group != "core") {
			return false, fmt.Errorf("targetRefs: kind %q of group %q: only a Service (group \"\") can be targeted", ref.Kind, ref.Group)
		}
		if ref.Namespace != "" && ref.Namespace != s.Namespace {
			return false, fmt.Errorf("targetRefs: Service %s/%s: a policy targets Services of its own namespace only", ref.Namespace, ref.Name)
		}
	}
	if s.Namespace != w.Namespace && !slices.Contains(roots, s.Namespace) {
		return false, nil
	}
	if len(s.TargetRefs) > 0 {
		if s.Namespace != w.Namespace {
			return false, nil
		}
		return slices.ContainsFunc(s.TargetRefs, func(r TargetRef) bool { return slices.Contains(w.Services, r.Name) }), nil
	}
	if s.Selector == nil {
		return true, nil
	}
	for k, v := range s.Selector.MatchLabels {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false, nil
		}
	}
	return true, nil
}

func compilePolicy(p Policy) (compiled, error) {
	action := p.Spec.Action
	if action == "" {
		action = Allow
	}
	switch action {
	case Allow, Deny, Audit:
	case Custom:
		return compiled{}, errors.New("action CUSTOM (an external authorizer) is not supported: use ALLOW, DENY or AUDIT")
	default:
		return compiled{}, fmt.Errorf("action %q: use ALLOW, DENY or AUDIT", action)
	}
	c := compiled{name: p.Namespace + "/" + p.Name, action: action}
	for i, r := range p.Spec.Rules {
		cr, err := compileRule(r)
		if err != nil {
			return compiled{}, fmt.Errorf("rules[%d]: %w", i, err)
		}
		if cr.httpOnly && action == Deny {
			tcp, err := compileRule(withoutHTTP(r))
			if err != nil {
				return compiled{}, fmt.Errorf("rules[%d]: %w", i, err)
			}
			cr.tcp = tcp.match
		}
		c.rules = append(c.rules, cr)
	}
	return c, nil
}

// Decide evaluates r: DENY first, then ALLOW; AUDIT and dry-run policies
// are reported.
func (e *Engine) Decide(r *Request) Decision {
	d := Decision{Allowed: true}
	for _, c := range e.audit {
		if _, ok := c.matches(r); ok {
			d.Audited = append(d.Audited, c.name)
		}
	}
	if e.shadow != nil {
		shadow := e.shadow.Decide(r)
		d.DryRun = &shadow
	}
	for _, c := range e.deny {
		if i, ok := c.matches(r); ok {
			d.Allowed, d.Policy, d.Rule, d.Action = false, c.name, i, Deny
			return d
		}
	}
	if len(e.allow) == 0 {
		return d
	}
	d.Action = Allow
	for _, c := range e.allow {
		if i, ok := c.matches(r); ok {
			d.Policy, d.Rule = c.name, i
			return d
		}
	}
	d.Allowed = false
	return d
}

// matches reports the first rule that matches. A policy with no rules
// matches nothing (an ALLOW policy without rules therefore allows
// nothing).
func (c compiled) matches(r *Request) (int, bool) {
	for i, rl := range c.rules {
		match := rl.match
		if rl.httpOnly && !r.HTTP {
			if match = rl.tcp; match == nil {
				continue
			}
		}
		if match(r) {
			return i, true
		}
	}
	return 0, false
}

// withoutHTTP is r without its HTTP-only fields: request principals,
// hosts, methods, paths and the request.* conditions.
func withoutHTTP(r Rule) Rule {
	out := Rule{}
	for _, f := range r.From {
		s := f.Source
		s.RequestPrincipals, s.NotRequestPrincipals = nil, nil
		out.From = append(out.From, From{Source: s})
	}
	for _, t := range r.To {
		out.To = append(out.To, To{Operation: Operation{Ports: t.Operation.Ports, NotPorts: t.Operation.NotPorts}})
	}
	for _, c := range r.When {
		if !strings.HasPrefix(c.Key, "request.") {
			out.When = append(out.When, c)
		}
	}
	return out
}

// matcher is one compiled condition of a rule.
type matcher func(*Request) bool

func all(ms []matcher) func(*Request) bool {
	return func(r *Request) bool {
		for _, m := range ms {
			if !m(r) {
				return false
			}
		}
		return true
	}
}

func compileRule(r Rule) (rule, error) {
	var ms []matcher
	httpOnly := false
	if len(r.From) > 0 {
		var alts []func(*Request) bool
		for i, f := range r.From {
			m, h, err := compileSource(f.Source)
			if err != nil {
				return rule{}, fmt.Errorf("from[%d].source.%w", i, err)
			}
			httpOnly = httpOnly || h
			alts = append(alts, m)
		}
		ms = append(ms, anyOf(alts))
	}
	if len(r.To) > 0 {
		var alts []func(*Request) bool
		for i, t := range r.To {
			m, h, err := compileOperation(t.Operation)
			if err != nil {
				return rule{}, fmt.Errorf("to[%d].operation.%w", i, err)
			}
			httpOnly = httpOnly || h
			alts = append(alts, m)
		}
		ms = append(ms, anyOf(alts))
	}
	for i, c := range r.When {
		m, h, err := compileCondition(c)
		if err != nil {
			return rule{}, fmt.Errorf("when[%d]: %w", i, err)
		}
		httpOnly = httpOnly || h
		ms = append(ms, m)
	}
	return rule{match: all(ms), httpOnly: httpOnly}, nil
}

func anyOf(alts []func(*Request) bool) matcher {
	return func(r *Request) bool {
		for _, a := range alts {
			if a(r) {
				return true
			}
		}
		return false
	}
}

// field adds the matchers of a values/notValues pair on one attribute.
type fields struct {
	ms       []matcher
	httpOnly bool
}

func (f *fields) strings(values, not []string, get func(*Request) string, http bool) {
	if len(values) == 0 && len(not) == 0 {
		return
	}
	f.httpOnly = f.httpOnly || http
	if len(values) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return matchAny(values, get(r)) })
	}
	if len(not) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return !matchAny(not, get(r)) })
	}
}

func (f *fields) addrs(name string, values, not []string, get func(*Request) netip.Addr) error {
	in, err := prefixes(name, values)
	if err != nil {
		return err
	}
	out, err := prefixes("not"+strings.ToUpper(name[:1])+name[1:], not)
	if err != nil {
		return err
	}
	if len(in) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return inAny(in, get(r)) })
	}
	if len(out) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return !inAny(out, get(r)) })
	}
	return nil
}

func compileSource(s Source) (func(*Request) bool, bool, error) {
	var f fields
	f.strings(s.Principals, s.NotPrincipals, func(r *Request) string { return r.Principal }, false)
	f.strings(s.RequestPrincipals, s.NotRequestPrincipals, requestPrincipal, true)
	f.strings(s.Namespaces, s.NotNamespaces, func(r *Request) string { return r.Namespace }, false)
	if err := f.addrs("ipBlocks", s.IPBlocks, s.NotIPBlocks, func(r *Request) netip.Addr { return r.SourceIP }); err != nil {
		return nil, false, err
	}
	if err := f.addrs("remoteIpBlocks", s.RemoteIPBlocks, s.NotRemoteIPBlocks, remoteIP); err != nil {
		return nil, false, err
	}
	return all(f.ms), f.httpOnly, nil
}

func compileOperation(o Operation) (func(*Request) bool, bool, error) {
	var f fields
	f.strings(lower(o.Hosts), lower(o.NotHosts), func(r *Request) string { return strings.ToLower(r.Host) }, true)
	for name, ports := range map[string][]string{"ports": o.Ports, "notPorts": o.NotPorts} {
		for _, p := range ports {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return nil, false, fmt.Errorf("%s: %q is not a port number", name, p)
			}
		}
	}
	f.strings(o.Ports, o.NotPorts, func(r *Request) string { return strconv.Itoa(r.DestPort) }, false)
	f.strings(o.Methods, o.NotMethods, func(r *Request) string { return r.Method }, true)
	in, err := compilePaths("paths", o.Paths)
	if err != nil {
		return nil, false, err
	}
	out, err := compilePaths("notPaths", o.NotPaths)
	if err != nil {
		return nil, false, err
	}
	if len(in) > 0 || len(out) > 0 {
		f.httpOnly = true
	}
	if len(in) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return anyPath(in, r.Path) })
	}
	if len(out) > 0 {
		f.ms = append(f.ms, func(r *Request) bool { return !anyPath(out, r.Path) })
	}
	return all(f.ms), f.httpOnly, nil
}

// compileCondition compiles a when entry. The keys are Istio's.
func compileCondition(c Condition) (matcher, bool, error) {
	if len(c.Values) == 0 && len(c.NotValues) == 0 {
		return nil, false, fmt.Errorf("key %q: give values or notValues", c.Key)
	}
	var f fields
	switch key, arg, _ := strings.Cut(c.Key, "["); key {
	case "request.headers", "request.auth.claims":
		if !strings.HasSuffix(arg, "]") || len(arg) < 2 {
			return nil, false, fmt.Errorf("key %q: write %s[NAME]", c.Key, key)
		}
		name := strings.TrimSuffix(arg, "]")
		var get func(*Request) []string
		if key == "request.headers" {
			get = func(r *Request) []string {
				if r.Header == nil {
					return nil
				}
				return r.Header(name)
			}
		} else {
			path := strings.Split(strings.Trim(name, "[]"), "][")
			get = func(r *Request) []string { return claim(r.Auth, path) }
		}
		if len(c.Values) > 0 {
			f.ms = append(f.ms, func(r *Request) bool {
				return slices.ContainsFunc(get(r), func(v string) bool { return matchAny(c.Values, v) })
			})
		}
		if len(c.NotValues) > 0 {
			f.ms = append(f.ms, func(r *Request) bool {
				return !slices.ContainsFunc(get(r), func(v string) bool { return matchAny(c.NotValues, v) })
			})
		}
		return all(f.ms), true, nil
	case "source.ip":
		return f.addrMatcher(c, func(r *Request) netip.Addr { return r.SourceIP }, false)
	case "remote.ip":
		return f.addrMatcher(c, remoteIP, false)
	case "destination.ip":
		return f.addrMatcher(c, func(r *Request) netip.Addr { return r.DestIP }, false)
	case "source.namespace":
		f.strings(c.Values, c.NotValues, func(r *Request) string { return r.Namespace }, false)
	case "source.principal":
		f.strings(c.Values, c.NotValues, func(r *Request) string { return r.Principal }, false)
	case "destination.port":
		f.strings(c.Values, c.NotValues, func(r *Request) string { return strconv.Itoa(r.DestPort) }, false)
	case "connection.sni":
		f.strings(c.Values, c.NotValues, func(r *Request) string { return r.SNI }, false)
	case "request.auth.principal":
		f.strings(c.Values, c.NotValues, requestPrincipal, true)
	case "request.auth.presenter":
		f.strings(c.Values, c.NotValues, func(r *Request) string {
			if r.Auth == nil {
				return ""
			}
			return r.Auth.Presenter
		}, true)
	case "request.auth.audiences":
		get := func(r *Request) []string {
			if r.Auth == nil {
				return nil
			}
			return r.Auth.Audiences
		}
		if len(c.Values) > 0 {
			f.ms = append(f.ms, func(r *Request) bool {
				return slices.ContainsFunc(get(r), func(v string) bool { return matchAny(c.Values, v) })
			})
		}
		if len(c.NotValues) > 0 {
			f.ms = append(f.ms, func(r *Request) bool {
				return !slices.ContainsFunc(get(r), func(v string) bool { return matchAny(c.NotValues, v) })
			})
		}
		return all(f.ms), true, nil
	default:
		return nil, false, fmt.Errorf("key %q is not supported: use request.headers[...], source.ip, remote.ip, source.namespace, source.principal, "+
			"request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], destination.ip, destination.port or connection.sni", c.Key)
	}
	return all(f.ms), f.httpOnly, nil
}

func (f *fields) addrMatcher(c Condition, get func(*Request) netip.Addr, http bool) (matcher, bool, error) {
	if err := f.addrs("values", c.Values, c.NotValues, get); err != nil {
		return nil, false, fmt.Errorf("key %q: %w", c.Key, err)
	}
	return all(f.ms), http, nil
}

func requestPrincipal(r *Request) string {
	if r.Auth == nil {
		return ""
	}
	return r.Auth.Principal
}

func remoteIP(r *Request) netip.Addr {
	if r.RemoteIP.IsValid() {
		return r.RemoteIP
	}
	return r.SourceIP
}

// claim reads a JWT claim by its path (nested objects), as strings: a
// string, each string of a list, or a number or boolean as written.
func claim(a *Auth, path []string) []string {
	if a == nil {
		return nil
	}
	var v any = a.Claims
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case bool, float64:
		return []string{fmt.Sprint(v)}
	}
	return nil
}

// matchAny matches value against Istio's string patterns: exact,
// "prefix*", "*suffix", or "*" for any non-empty value.
func matchAny(patterns []string, value string) bool {
	for _, p := range patterns {
		switch {
		case p == "*":
			if value != "" {
				return true
			}
		case strings.HasSuffix(p, "*"):
			if strings.HasPrefix(value, p[:len(p)-1]) {
				return true
			}
		case strings.HasPrefix(p, "*"):
			if strings.HasSuffix(value, p[1:]) {
				return true
			}
		case p == value:
			return true
		}
	}
	return false
}

func lower(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strings.ToLower(v)
	}
	return out
}

func prefixes(field string, vs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vs {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, fmt.Errorf("%s: %q is neither an address nor a CIDR", field, v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// pathMatcher is a compiled paths entry: Istio's string pattern, or a
// path template with {*} (one segment) and {**} (the rest, last).
type pathMatcher struct {
	pattern string
	re      *regexp.Regexp
}

func compilePaths(field string, paths []string) ([]pathMatcher, error) {
	var out []pathMatcher
	for _, p := range paths {
		if !strings.Contains(p, "{") && !strings.Contains(p, "}") {
			out = append(out, pathMatcher{pattern: p})
			continue
		}
		segs := strings.Split(p, "/")
		var re strings.Builder
		re.WriteString("^")
		for i, s := range segs {
			if i > 0 {
				re.WriteString("/")
			}
			switch {
			case s == "{*}":
				re.WriteString("[^/]+")
			case s == "{**}":
				if strings.Contains(strings.Join(segs[i+1:], "/"), "{") {
					return nil, fmt.Errorf("%s: %q: {**} must be the last operator", field, p)
				}
				re.WriteString(".*")
			case strings.ContainsAny(s, "{}*"):
				return nil, fmt.Errorf("%s: %q: a template segment is {*} or {**} alone, and no * outside them", field, p)
			default:
				re.WriteString(regexp.QuoteMeta(s))
			}
		}
		re.WriteString("$")
		out = append(out, pathMatcher{re: regexp.MustCompile(re.String())})
	}
	return out, nil
}

func anyPath(ms []pathMatcher, path string) bool {
	for _, m := range ms {
		if m.re != nil && m.re.MatchString(path) || m.re == nil && matchAny([]string{m.pattern}, path) {
			return true
		}
	}
	return false
}
