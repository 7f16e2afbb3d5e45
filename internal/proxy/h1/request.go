package h1

import (
	"bytes"
	"strings"
)

// Form is the form of a request target (RFC 9112 3.2).
type Form uint8

const (
	FormOrigin    Form = iota // /path?query
	FormAbsolute              // http://host:port/path?query (to proxies)
	FormAuthority             // host:port, CONNECT's only
	FormAsterisk              // *, OPTIONS's only
)

// Request is a parsed request head. Its byte slices point into the buffer
// ParseRequest was given.
type Request struct {
	Method []byte
	Target []byte // as sent
	Form   Form
	Minor  byte // HTTP/1.Minor: 0 or 1
	Fields []Field
	// Host is the authority the request is for: the absolute target's,
	// else the Host field's (nil for an HTTP/1.0 request without one).
	Host []byte
	Body Body // never UntilClose
	// Close: the connection ends after this exchange (Connection: close,
	// or HTTP/1.0 without keep-alive).
	Close bool
	// Upgrade: Connection lists upgrade and an Upgrade field is present
	// (WebSocket and the like; the engine hands such requests on).
	Upgrade bool
	// ExpectContinue: Expect: 100-continue.
	ExpectContinue bool
}

// Field returns the value of the first field named name (lower case), or
// nil.
func (r *Request) Field(name string) []byte { return lookup(r.Fields, name) }

func lookup(fields []Field, name string) []byte {
	for _, f := range fields {
		if EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return nil
}

// ParseRequest parses the request head at the start of buf into r, whose
// Fields slice it reuses. It returns the head's length, or 0 and a nil
// error when buf does not hold all of it yet, or 0 and an *Error saying
// why the request is refused. Empty lines before the request line are
// skipped (RFC 9112 2.2) and counted in the length.
func ParseRequest(buf []byte, lim Limits, r *Request) (int, error) {
	*r = Request{Fields: r.Fields[:0]}
	start := 0
	for len(buf)-start >= 2 && buf[start] == '\r' && buf[start+1] == '\n' {
		start += 2
	}
	p := headParser{buf: buf, pos: start, limit: start + lim.maxHead()}
	line, ok, err := p.line()
	if !ok {
		return 0, nilIfNone(err)
	}
	if err := r.requestLine(line); err != nil {
		return 0, err
	}
	r.Fields, ok, err = p.fields(r.Fields, lim.maxFields())
	if !ok {
		return 0, nilIfNone(err)
	}
	if err := r.interpret(); err != nil {
		return 0, err
	}
	return p.pos, nil
}

// nilIfNone keeps a nil *Error from becoming a non-nil error.
func nilIfNone(err *Error) error {
	if err == nil {
		return nil
	}
	return err
}

// requestLine parses method SP target SP version.
func (r *Request) requestLine(line []byte) *Error {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return refuse(400, "malformed request line "+quote(line))
	}
	r.Method = line[:sp]
	for _, c := range r.Method {
		if !isToken(c) {
			return refuse(400, "invalid method "+quote(r.Method))
		}
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return refuse(400, "malformed request line "+quote(line))
	}
	r.Target = rest[:sp]
	minor, err := parseVersion(rest[sp+1:])
	if err != nil {
		return err
	}
	r.Minor = minor
	r.Form, err = targetForm(r.Target, string(r.Method))
	return err
}

// targetForm checks a request target and tells its form.
func targetForm(t []byte, method string) (Form, *Error) {
	for _, c := range t {
		switch {
		case c <= ' ' || c >= 0x7f:
			return 0, refuseStrict(400, "the request target has a byte outside visible ASCII: percent-encode it")
		case c == '#':
			return 0, refuseStrict(400, "a fragment (#...) in the request target; clients must not send one")
		}
	}
	switch {
	case method == "CONNECT":
		if !validAuthority(t) {
			return 0, refuseStrict(400, "CONNECT's target must be host:port, not "+quote(t))
		}
		return FormAuthority, nil
	case t[0] == '/':
		return FormOrigin, checkPathQuery(t)
	case len(t) == 1 && t[0] == '*':
		if method != "OPTIONS" {
			return 0, refuseStrict(400, "the target * is for OPTIONS only")
		}
		return FormAsterisk, nil
	}
	i := bytes.Index(t, []byte("://"))
	if i <= 0 || !validScheme(t[:i]) {
		return 0, refuseStrict(400, "the request target "+quote(t)+" is neither a path (/...) nor an absolute URL")
	}
	rest := t[i+3:]
	end := bytes.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	if !validAuthority(rest[:end]) {
		return 0, refuseStrict(400, "the authority of "+quote(t)+" is not host[:port]")
	}
	return FormAbsolute, checkPathQuery(rest[end:])
}

// checkPathQuery checks the percent-escapes of a target's path (its query
// is the app's business).
func checkPathQuery(t []byte) *Error {
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		t = t[:q]
	}
	for i := 0; i < len(t); i++ {
		if t[i] == '%' {
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return refuse(400, "the request path has a malformed percent-escape")
			}
			i += 2
		}
	}
	return nil
}

func isHex(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// validScheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
func validScheme(s []byte) bool {
	for i, c := range s {
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !alpha && (i == 0 || !isDigit(c) && c != '+' && c != '-' && c != '.') {
			return false
		}
	}
	return true
}

// validAuthority accepts host[:port]: a name of RFC 3986 reg-name
// characters without escapes, or an IPv6 literal in brackets; the port
// decimal digits. Userinfo, escapes and anything else are refused.
func validAuthority(a []byte) bool {
	host, port := a, []byte(nil)
	if len(a) > 0 && a[0] == '[' {
		end := bytes.IndexByte(a, ']')
		if end < 2 {
			return false
		}
		for _, c := range a[1:end] {
			if !isHex(c) && c != ':' && c != '.' {
				return false
			}
		}
		host, port = nil, a[end+1:]
		if len(port) > 0 && port[0] != ':' {
			return false
		}
	} else if i := bytes.IndexByte(a, ':'); i >= 0 {
		host, port = a[:i], a[i:]
	}
	if host != nil && len(host) == 0 {
		return false
	}
	for _, c := range host {
		if !isHostByte(c) {
			return false
		}
	}
	if len(port) > 0 {
		for _, c := range port[1:] {
			if !isDigit(c) {
				return false
			}
		}
	}
	return true
}

// isHostByte: unreserved and sub-delims (RFC 3986 3.2.2).
func isHostByte(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || strings.IndexByte("-._~!$&'()*+,;=", c) >= 0
}

// interpret reads the request's framing, Host and connection options from
// its fields.
func (r *Request) interpret() *Error {
	body, conn, err := framing(r.Fields, r.Minor)
	if err != nil {
		return err
	}
	r.Body = body
	hosts := 0
	for _, f := range r.Fields {
		switch {
		case EqualFold(f.Name, "host"):
			if hosts++; hosts > 1 {
				return refuse(400, "more than one Host field")
			}
			if len(f.Value) > 0 && !validAuthority(f.Value) {
				return refuseStrict(400, "the Host field "+quote(f.Value)+" is not host[:port]")
			}
			r.Host = f.Value
		case EqualFold(f.Name, "expect"):
			r.ExpectContinue = EqualFold(f.Value, "100-continue")
		case EqualFold(f.Name, "upgrade"):
			r.Upgrade = conn.upgrade
		}
	}
	switch {
	case hosts == 0 && r.Minor == 1 && r.Form != FormAuthority:
		return refuse(400, "missing required Host header")
	case r.Form == FormAbsolute:
		t := r.Target[bytes.Index(r.Target, []byte("://"))+3:]
		if end := bytes.IndexAny(t, "/?"); end >= 0 {
			t = t[:end]
		}
		r.Host = t
	case r.Form == FormAuthority:
		r.Host = r.Target
	}
	r.Close = conn.close || r.Minor == 0 && !conn.keepAlive
	return nil
}
