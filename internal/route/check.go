package route

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The condition types and reasons route status uses, as the Gateway API
// spells them. Conflicted is GEP-1294's, for a route that lost to a route
// of another kind on the same Service port.
const (
	ConditionAccepted         = "Accepted"
	ConditionResolvedRefs     = "ResolvedRefs"
	ConditionPartiallyInvalid = "PartiallyInvalid"

	ReasonAccepted            = "Accepted"
	ReasonUnsupportedValue    = "UnsupportedValue"
	ReasonIncompatibleFilters = "IncompatibleFilters"
	ReasonNoMatchingParent    = "NoMatchingParent"
	ReasonConflicted          = "Conflicted"

	ReasonResolvedRefs    = "ResolvedRefs"
	ReasonBackendNotFound = "BackendNotFound"
	ReasonInvalidKind     = "InvalidKind"
)

// invalid is a problem with a field: the rule (or route) holding it is
// not used. field is its path from the route's spec.
type invalid struct {
	reason, field, msg string
}

func (e *invalid) Error() string {
	if e.field == "" {
		return e.msg
	}
	return e.field + ": " + e.msg
}

func unsupported(format string, a ...any) error {
	return &invalid{reason: ReasonUnsupportedValue, msg: fmt.Sprintf(format, a...)}
}

func incompatible(format string, a ...any) error {
	return &invalid{reason: ReasonIncompatibleFilters, msg: fmt.Sprintf(format, a...)}
}

// at puts err under field: at("matches[0]", "path: ...") is
// "matches[0].path: ...".
func at(field string, err error) error {
	var e *invalid
	if err == nil || !errors.As(err, &e) {
		return err
	}
	out := *e
	switch {
	case out.field == "":
		out.field = field
	case strings.HasPrefix(out.field, "["):
		out.field = field + out.field
	default:
		out.field = field + "." + out.field
	}
	return &out
}

func reasonOf(err error) string {
	var e *invalid
	if errors.As(err, &e) {
		return e.reason
	}
	return ReasonUnsupportedValue
}

// source is a route's identity and age, for precedence and status.
type source struct {
	ref        catalog.Ref
	key        string // "namespace/name"
	created    time.Time
	generation int64
}

// checked is one route validated and compiled on its own, before it is
// attached anywhere.
type checked struct {
	src     *source
	grpc    bool
	parents []catalog.ParentReference
	rules   []*rule // the valid rules
	// dropped are the invalid rules' problems, in rule order.
	dropped []error
	// refused, when set, refuses the whole route.
	refused error
	// refs are the backendRef problems: the backends stay, invalid.
	refs []refProblem
	// ordered: the rules are tried in order, not by precedence (a
	// VirtualService's).
	ordered bool
}

type refProblem struct {
	reason, msg string
}

// ruleField names rule i: a VirtualService's are its http routes.
func (c *checked) ruleField(i int) string {
	if c.ordered {
		return fmt.Sprintf("http[%d]", i)
	}
	return fmt.Sprintf("rules[%d]", i)
}

// accepted reports whether the route has something to attach.
func (c *checked) accepted() bool { return c.refused == nil && len(c.rules) > 0 }

// compiler checks and compiles routes against one Config.
type compiler struct {
	cfg    Config
	limits Limits
	// port is the parent Service port a table is compiled for; 0 when
	// routes are checked for their status.
	port int32
	// parentPorts, for status, are the ports of a VirtualService's
	// parents: where a destination without a port gets requests.
	parentPorts []int32
	// refs collects the backendRef problems of the route being compiled.
	refs []refProblem
}

func newCompiler(cfg Config) *compiler {
	return &compiler{cfg: cfg, limits: cfg.Limits.withDefaults()}
}

func newSource(kind catalog.Kind, m catalog.Meta) *source {
	return &source{ref: catalog.Ref{Kind: kind, Namespace: m.Namespace, Name: m.Name},
		key: m.Namespace + "/" + m.Name, created: m.CreationTimestamp, generation: m.Generation}
}

// checkRules compiles n rules with compile, dropping the invalid ones.
// Zero rules is one rule that matches everything (the CRD's default).
func (c *compiler) checkRules(out *checked, n int, compile func(i int) (*rule, error)) {
	c.refs = nil
	if n > c.limits.MaxRules {
		field := "rules"
		if out.ordered {
			field = "http"
		}
		out.refused = at(field, unsupported("%d rules, more than %d: split the route in two", n, c.limits.MaxRules))
		return
	}
	for i := range max(n, 1) {
		first := len(c.refs)
		r, err := compile(i)
		for j := first; j < len(c.refs); j++ {
			c.refs[j].msg = fmt.Sprintf("%s.%s", out.ruleField(i), c.refs[j].msg)
		}
		if err != nil {
			c.refs = c.refs[:first] // a dropped rule's references do not count
			out.dropped = append(out.dropped, at(out.ruleField(i), err))
			continue
		}
		r.src, r.index, r.grpc = out.src, i, out.grpc
		out.rules = append(out.rules, r)
	}
	out.refs = c.refs
}

func (c *compiler) checkHTTP(rt *catalog.HTTPRoute) *checked {
	out := &checked{src: newSource(catalog.KindHTTPRoute, rt.Meta), parents: rt.Spec.ParentRefs}
	c.checkRules(out, len(rt.Spec.Rules), func(i int) (*rule, error) {
		if len(rt.Spec.Rules) == 0 {
			return c.httpRule(catalog.HTTPRouteRule{}, rt.Namespace)
		}
		return c.httpRule(rt.Spec.Rules[i], rt.Namespace)
	})
	return out
}

func (c *compiler) httpRule(in catalog.HTTPRouteRule, ns string) (*rule, error) {
	if in.SessionPersistence != nil {
		return nil, at("sessionPersistence", unsupported("not supported by Trellis: remove it"))
	}
	r := &rule{}
	var err error
	if r.matches, err = c.httpMatches(in.Matches); err != nil {
		return nil, err
	}
	if err := c.httpFilters(r, in, ns); err != nil {
		return nil, err
	}
	if r.redirect != nil && len(in.BackendRefs) > 0 {
		return nil, at("backendRefs", incompatible("a rule with a RequestRedirect filter sends nothing to backends: remove the backendRefs or the redirect"))
	}
	refs := make([]backendIn, len(in.BackendRefs))
	for i, b := range in.BackendRefs {
		refs[i] = backendIn{ref: b.BackendRef, filters: b.Filters}
	}
	if err := c.backends(r, refs, ns); err != nil {
		return nil, err
	}
	if r.timeouts, err = timeouts(in.Timeouts); err != nil {
		return nil, at("timeouts", err)
	}
	if r.retry, err = retry(in.Retry); err != nil {
		return nil, at("retry", err)
	}
	return r, nil
}

func (c *compiler) httpMatches(in []catalog.HTTPRouteMatch) ([]match, error) {
	if len(in) > c.limits.MaxMatches {
		return nil, at("matches", unsupported("%d matches, more than %d: split the rule", len(in), c.limits.MaxMatches))
	}
	if len(in) == 0 {
		in = []catalog.HTTPRouteMatch{{}}
	}
	out := make([]match, len(in))
	for i, m := range in {
		if err := c.httpMatch(&out[i], m); err != nil {
			return nil, at(fmt.Sprintf("matches[%d]", i), err)
		}
	}
	return out, nil
}

var methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

func (c *compiler) httpMatch(out *match, in catalog.HTTPRouteMatch) error {
	p := catalog.HTTPPathMatch{}
	if in.Path != nil {
		p = *in.Path
	}
	if err := c.pathMatch(out, p); err != nil {
		return at("path", err)
	}
	if in.Method != "" && !slices.Contains(methods, in.Method) {
		return at("method", unsupported("%q is not an HTTP method: use one of %s, in upper case", in.Method, strings.Join(methods, ", ")))
	}
	out.method = in.Method
	var err error
	if out.headers, err = c.headerMatches(in.Headers); err != nil {
		return err
	}
	if len(in.QueryParams) > c.limits.MaxHeaderMatches {
		return at("queryParams", unsupported("%d matches, more than %d", len(in.QueryParams), c.limits.MaxHeaderMatches))
	}
	for i, q := range in.QueryParams {
		if slices.ContainsFunc(out.query, func(m queryMatch) bool { return m.name == q.Name }) {
			continue // the spec: only the first entry of a name counts
		}
		if q.Name == "" || q.Value == "" {
			return at(fmt.Sprintf("queryParams[%d]", i), unsupported("give a name and a value"))
		}
		v, err := c.value(q.Type, q.Value)
		if err != nil {
			return at(fmt.Sprintf("queryParams[%d]", i), err)
		}
		out.query = append(out.query, queryMatch{name: q.Name, value: v})
	}
	return nil
}

func (c *compiler) pathMatch(out *match, p catalog.HTTPPathMatch) error {
	if p.Value == "" {
		p.Value = "/"
	}
	switch p.Type {
	case "", catalog.MatchPathPrefix, catalog.MatchExact:
		if err := checkPath(p.Value); err != nil {
			return at("value", err)
		}
		out.kind, out.path = pathExact, value{exact: p.Value}
		if p.Type != catalog.MatchExact {
			out.kind, out.path = pathPrefix, value{exact: strings.TrimSuffix(p.Value, "/")}
		}
	case catalog.MatchRegularExpression:
		v, err := c.value(p.Type, p.Value)
		if err != nil {
			return err
		}
		out.kind, out.path = pathRegex, v
	default:
		return at("type", unsupported("%q: use Exact, PathPrefix or RegularExpression", p.Type))
	}
	return nil
}

// pathChars is the character set of Exact and PathPrefix paths.
var pathChars = regexp.MustCompile(`^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*$`)

// checkPath checks an Exact or PathPrefix value, or a replacement path,
// as the CRD does.
func checkPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return unsupported("%q must start with /", p)
	case len(p) > 1024:
		return unsupported("longer than 1024 bytes")
	case strings.Contains(p, "//"), strings.Contains(p, "/./"), strings.Contains(p, "/../"),
		strings.HasSuffix(p, "/.."), strings.HasSuffix(p, "/."):
		return unsupported("%q: write the path without empty, . or .. segments", p)
	case strings.Contains(strings.ToLower(p), "%2f"), strings.Contains(p, "#"):
		return unsupported("%q: a path holds no encoded / (%%2F) and no #", p)
	case !pathChars.MatchString(p):
		return unsupported("%q: only URL path characters, others percent-encoded", p)
	}
	return nil
}

// value compiles an Exact or RegularExpression comparison. A regular
// expression must match the whole value.
func (c *compiler) value(typ, v string) (value, error) {
	switch typ {
	case "", catalog.MatchExact:
		return value{exact: v}, nil
	case catalog.MatchRegularExpression:
		if len(v) > c.limits.MaxRegexLength {
			return value{}, unsupported("a regular expression of %d bytes, more than %d: shorten it", len(v), c.limits.MaxRegexLength)
		}
		re, err := regexp.Compile(`^(?:` + v + `)$`)
		if err != nil {
			return value{}, unsupported("%q is not a regular expression Go's RE2 syntax accepts: %v", v, err)
		}
		if n := regexSize(v); n > maxRegexInstructions {
			return value{}, unsupported("%q compiles to %d instructions, more than %d (counted repeats such as {1000} copy what they repeat): simplify it", v, n, maxRegexInstructions)
		}
		return value{exact: v, re: re}, nil
	}
	return value{}, at("type", unsupported("%q: use Exact or RegularExpression", typ))
}

// headerName is the token syntax of header names.
var headerName = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+\\-.^_`|~]{1,256}$")

func (c *compiler) headerMatches(in []catalog.HTTPHeaderMatch) ([]headerMatch, error) {
	if len(in) > c.limits.MaxHeaderMatches {
		return nil, at("headers", unsupported("%d matches, more than %d", len(in), c.limits.MaxHeaderMatches))
	}
	var out []headerMatch
	for i, h := range in {
		name := canonical(h.Name)
		if slices.ContainsFunc(out, func(m headerMatch) bool { return m.name == name }) {
			continue // the spec: only the first entry of a name counts
		}
		if !headerName.MatchString(h.Name) || h.Value == "" {
			return nil, at(fmt.Sprintf("headers[%d]", i), unsupported("give a header name (letters, digits, -) and a value"))
		}
		v, err := c.value(h.Type, h.Value)
		if err != nil {
			return nil, at(fmt.Sprintf("headers[%d]", i), err)
		}
		out = append(out, headerMatch{name: name, host: name == "Host", value: v})
	}
	return out, nil
}

func timeouts(in *catalog.HTTPRouteTimeouts) (Timeouts, error) {
	var t Timeouts
	if in == nil {
		return t, nil
	}
	var err error
	if t.Request, err = timeout(in.Request); err != nil {
		return t, at("request", unsupported("%v", err))
	}
	if t.BackendRequest, err = timeout(in.BackendRequest); err != nil {
		return t, at("backendRequest", unsupported("%v", err))
	}
	// As the CRD checks it: "0s" is zero here, so either may be "0s".
	if t.Request != NoTimeout && t.BackendRequest != NoTimeout && t.Request != 0 && t.BackendRequest > t.Request {
		return t, at("backendRequest", unsupported("%s is longer than the request timeout %s: it covers one attempt of the request, so make it shorter",
			in.BackendRequest, in.Request))
	}
	return t, nil
}

// timeout reads a timeout: unset is 0, "0s" NoTimeout.
func timeout(d catalog.Duration) (time.Duration, error) {
	if d == "" {
		return 0, nil
	}
	v, err := parseDuration(d)
	if err == nil && v == 0 {
		v = NoTimeout
	}
	return v, err
}

func retry(in *catalog.HTTPRouteRetry) (*Retry, error) {
	if in == nil {
		return nil, nil
	}
	out := &Retry{Codes: in.Codes}
	for i, code := range in.Codes {
		if code < 400 || code > 599 {
			return nil, at(fmt.Sprintf("codes[%d]", i), unsupported("%d: retry on a status from 400 to 599, as 503", code))
		}
	}
	if in.Attempts != nil {
		if *in.Attempts < 1 {
			return nil, at("attempts", unsupported("%d: give at least 1, or leave it out", *in.Attempts))
		}
		out.Attempts = *in.Attempts
	}
	if in.Backoff != "" {
		d, err := parseDuration(in.Backoff)
		if err != nil {
			return nil, at("backoff", unsupported("%v", err))
		}
		out.Backoff = d
	}
	return out, nil
}

// maxRegexInstructions bounds a regular expression's compiled program. A
// counted repeat copies what it repeats, so a few hundred bytes of them
// ([a-z]{1000} twenty times) compile to a program of 20 000 instructions,
// and every proxy that can reach the route's Service compiles it and runs
// it on requests: RE2 is linear in the input, but its time and memory per
// match grow with the program.
const maxRegexInstructions = 5000

// regexSize is the number of instructions v compiles to; one past the
// budget when it does not parse (regexp.Compile has already said why).
func regexSize(v string) int {
	re, err := syntax.Parse(v, syntax.Perl)
	if err != nil {
		return maxRegexInstructions + 1
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return maxRegexInstructions + 1
	}
	return len(prog.Inst)
}
