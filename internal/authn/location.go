package authn

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// location is where a rule looks for tokens.
type location struct {
	in     where
	name   string // canonical, for a header
	prefix string // for a header
}

type where int

const (
	inHeader where = iota
	inParam
	inCookie
)

func (l location) String() string {
	switch l.in {
	case inHeader:
		return "header " + l.name
	case inParam:
		return "query parameter " + l.name
	}
	return "cookie " + l.name
}

func locations(r JWTRule) []location {
	if len(r.FromHeaders)+len(r.FromParams)+len(r.FromCookies) == 0 {
		return []location{{in: inHeader, name: "Authorization", prefix: "Bearer "}, {in: inParam, name: "access_token"}}
	}
	var out []location
	for _, h := range r.FromHeaders {
		out = append(out, location{in: inHeader, name: textproto.CanonicalMIMEHeaderKey(h.Name), prefix: h.Prefix})
	}
	for _, p := range r.FromParams {
		out = append(out, location{in: inParam, name: p})
	}
	for _, c := range r.FromCookies {
		out = append(out, location{in: inCookie, name: c})
	}
	return out
}

// token is a token as found, not yet verified.
type token struct {
	loc   location
	value string
}

// find returns the tokens in r, stopping past maxTokens. An empty value,
// or a header without the prefix (say Basic credentials in
// Authorization), is no token.
func (a *Authenticator) find(r *http.Request) []token {
	var out []token
	for _, l := range a.locs {
		for _, v := range l.values(r) {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, token{l, v})
			}
			if len(out) > maxTokens {
				return out
			}
		}
	}
	return out
}

func (l location) values(r *http.Request) []string {
	switch l.in {
	case inHeader:
		var out []string
		for _, v := range r.Header.Values(l.name) {
			if len(v) >= len(l.prefix) && strings.EqualFold(v[:len(l.prefix)], l.prefix) {
				out = append(out, v[len(l.prefix):])
			}
		}
		return out
	case inParam:
		return queryValues(r.URL.RawQuery, l.name)
	}
	var out []string
	for _, c := range r.CookiesNamed(l.name) {
		out = append(out, c.Value)
	}
	return out
}

// remove takes the token out of r: the whole header, the query
// parameter, or the one cookie.
func (l location) remove(r *http.Request) {
	switch l.in {
	case inHeader:
		r.Header.Del(l.name)
	case inParam:
		r.URL.RawQuery = removeQuery(r.URL.RawQuery, l.name)
	case inCookie:
		removeCookie(r.Header, l.name)
	}
}

// queryValues returns name's values in a raw query, decoded as
// url.ParseQuery does; it reads the query in place so that removeQuery
// can keep the rest of it as sent.
func queryValues(raw, name string) []string {
	var out []string
	for part := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(part, "=")
		if k, err := url.QueryUnescape(k); err != nil || k != name {
			continue
		}
		if v, err := url.QueryUnescape(v); err == nil {
			out = append(out, v)
		}
	}
	return out
}

func removeQuery(raw, name string) string {
	var keep []string
	for part := range strings.SplitSeq(raw, "&") {
		k, _, _ := strings.Cut(part, "=")
		if k, err := url.QueryUnescape(k); part == "" || err == nil && k == name {
			continue
		}
		keep = append(keep, part)
	}
	return strings.Join(keep, "&")
}

func removeCookie(h http.Header, name string) {
	lines := h.Values("Cookie")
	h.Del("Cookie")
	for _, line := range lines {
		var keep []string
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if n, _, _ := strings.Cut(part, "="); part == "" || strings.TrimSpace(n) == name {
				continue
			}
			keep = append(keep, part)
		}
		if len(keep) > 0 {
			h.Add("Cookie", strings.Join(keep, "; "))
		}
	}
}
