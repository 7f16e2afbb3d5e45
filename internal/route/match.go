package route

import (
	"net/url"
	"regexp"
	"strings"
)

// pathKind orders path matches: Exact first, then regular expressions,
// then prefixes. The spec ranks Exact above PathPrefix and leaves regular
// expressions to the implementation; we put them before every prefix so
// that a catch-all prefix "/" (a rule without matches) cannot hide them.
type pathKind uint8

const (
	pathExact pathKind = iota
	pathRegex
	pathPrefix
)

// value is a compiled Exact or RegularExpression comparison.
type value struct {
	exact string
	re    *regexp.Regexp // nil: exact
}

func (v value) match(s string) bool {
	if v.re != nil {
		return v.re.MatchString(s)
	}
	return s == v.exact
}

func (v value) String() string {
	if v.re != nil {
		return "~" + v.exact
	}
	return v.exact
}

// headerMatch compares one header. host marks the Host header, read from
// Request.Host.
type headerMatch struct {
	name string // canonical
	host bool
	value
}

type queryMatch struct {
	name string
	value
}

// match is one compiled match of a rule, HTTP or gRPC; its fields are
// ANDed.
type match struct {
	// HTTP
	kind   pathKind
	path   value // for a prefix, without its trailing "/"
	method string
	query  []queryMatch
	// gRPC: empty service or method values match anything.
	service, grpcMethod   value
	anyService, anyMethod bool
	// both
	headers []headerMatch
}

func (m *match) matchHTTP(r *Request) bool {
	switch m.kind {
	case pathExact:
		if r.Path != m.path.exact {
			return false
		}
	case pathPrefix:
		if !hasPathPrefix(r.Path, m.path.exact) {
			return false
		}
	case pathRegex:
		if !m.path.re.MatchString(r.Path) {
			return false
		}
	}
	if m.method != "" && r.Method != m.method {
		return false
	}
	return m.matchHeaders(r) && m.matchQuery(r.RawQuery)
}

func (m *match) matchGRPC(r *Request) bool {
	if !r.GRPC {
		return false
	}
	if !m.anyService || !m.anyMethod {
		svc, method, ok := grpcPath(r.Path)
		if !ok || !m.anyService && !m.service.match(svc) || !m.anyMethod && !m.grpcMethod.match(method) {
			return false
		}
	}
	return m.matchHeaders(r)
}

// grpcPath splits "/package.Service/Method".
func grpcPath(p string) (svc, method string, ok bool) {
	if !strings.HasPrefix(p, "/") {
		return "", "", false
	}
	svc, method, ok = strings.Cut(p[1:], "/")
	return svc, method, ok && svc != "" && method != "" && !strings.Contains(method, "/")
}

// hasPathPrefix matches whole path elements: "/abc" matches "/abc",
// "/abc/" and "/abc/def", not "/abcd". prefix has no trailing "/" ("/" is
// the empty prefix).
func hasPathPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

func (m *match) matchHeaders(r *Request) bool {
	for i := range m.headers {
		h := &m.headers[i]
		if h.host {
			if !h.match(r.Host) {
				return false
			}
			continue
		}
		if r.Header == nil || !matchValues(h.value, r.Header(h.name)) {
			return false
		}
	}
	return true
}

// matchValues compares a header's values as one, joined by "," as RFC
// 9110 section 5.3 combines repeated fields; a missing header matches
// nothing.
func matchValues(v value, vs []string) bool {
	switch {
	case len(vs) == 0:
		return false
	case len(vs) == 1:
		return v.match(vs[0])
	case v.re != nil:
		return v.re.MatchString(strings.Join(vs, ","))
	}
	rest := v.exact
	for i, s := range vs {
		if i > 0 {
			if !strings.HasPrefix(rest, ",") {
				return false
			}
			rest = rest[1:]
		}
		if !strings.HasPrefix(rest, s) {
			return false
		}
		rest = rest[len(s):]
	}
	return rest == ""
}

func (m *match) matchQuery(raw string) bool {
	for i := range m.query {
		q := &m.query[i]
		v, ok := queryValue(raw, q.name)
		if !ok || !q.match(v) {
			return false
		}
	}
	return true
}

// queryValue returns the first value of the query parameter name, as the
// spec recommends for repeated ones. It allocates only to unescape.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || key != name {
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return "", false
		}
		return val, true
	}
	return "", false
}
