// Package h1 is the request path's HTTP/1.1 codec (RFC 9112): a strict
// parser of request and response heads over the bytes of a read buffer,
// and the decoder of chunked bodies.
//
// It parses once what the proxy must agree on with any server behind it
// (how a message is framed, which fields it has) and refuses anything two
// implementations could read differently, the way request smuggling
// starts: bare LF line endings, obs-fold continuation lines, whitespace
// before a field's colon, Content-Length together with Transfer-Encoding,
// more than one Content-Length, a Transfer-Encoding other than chunked,
// malformed chunk framing, a fragment in the target. Everything net/http
// refuses it refuses too; the differential fuzz test (FuzzRequestAgainstNetHTTP)
// holds it to that, field for field.
//
// Nothing here reads from a connection or allocates per message: parsers
// take the bytes buffered so far, report how many they used or that they
// need more, and return fields as slices into those bytes, valid until the
// caller reuses the buffer. The proxy's engines (internal/proxy) import it.
package h1

import (
	"bytes"
	"strconv"
)

// Limits bound what one head may hold. The zero value is the defaults.
type Limits struct {
	// MaxHeadBytes bounds the start line and fields together, line
	// endings included; beyond it a request is answered with 431.
	// Default 64 KiB.
	MaxHeadBytes int
	// MaxFields bounds the number of field lines; beyond it, 431.
	// Default 100.
	MaxFields int
}

func (l Limits) maxHead() int {
	if l.MaxHeadBytes > 0 {
		return l.MaxHeadBytes
	}
	return 64 << 10
}

func (l Limits) maxFields() int {
	if l.MaxFields > 0 {
		return l.MaxFields
	}
	return 100
}

// Error is a refused message: the status a server answers it with and
// what is wrong, in words a client's developer can act on.
type Error struct {
	Status int    // 400, 431, 501 or 505 (for a response: see ParseResponse)
	Reason string // what is wrong, and the fix where it is not obvious
	// Strict is set where net/http would have accepted the message and
	// this codec refuses it on purpose, because a server behind the
	// proxy could frame or read it differently (smuggling) or because
	// the mesh has no meaning for it.
	Strict bool
}

func (e *Error) Error() string { return e.Reason }

func refuse(status int, reason string) *Error { return &Error{Status: status, Reason: reason} }

func refuseStrict(status int, reason string) *Error {
	return &Error{Status: status, Reason: reason, Strict: true}
}

// Field is one field line, its name as sent (compare it with
// EqualFold) and its value without surrounding whitespace.
type Field struct {
	Name, Value []byte
}

// Body is how a message's body is framed.
type Body struct {
	// Length is the Content-Length; -1 when the message has none.
	Length int64
	// Chunked: Transfer-Encoding: chunked (Length is -1).
	Chunked bool
	// UntilClose: a response whose body runs until the server closes the
	// connection (neither of the above, RFC 9112 6.3 rule 8).
	UntilClose bool
}

// None reports whether the message has no body at all.
func (b Body) None() bool { return !b.Chunked && !b.UntilClose && b.Length <= 0 }

// connection is what a head's Connection, Upgrade and Expect fields say.
type connection struct {
	close, keepAlive, upgrade bool
}

// headParser walks the lines of one head in buf.
type headParser struct {
	buf   []byte
	pos   int // start of the next line
	limit int
}

// line returns the next line without its CRLF; ok false when buf does not
// hold all of it yet.
func (p *headParser) line() (line []byte, ok bool, err *Error) {
	i := bytes.IndexByte(p.buf[p.pos:], '\n')
	if i < 0 {
		if len(p.buf) > p.limit {
			return nil, false, refuse(431, "the header section is over "+strconv.Itoa(p.limit)+" bytes")
		}
		return nil, false, nil
	}
	end := p.pos + i
	if end+1 > p.limit {
		return nil, false, refuse(431, "the header section is over "+strconv.Itoa(p.limit)+" bytes")
	}
	if i == 0 || p.buf[end-1] != '\r' {
		return nil, false, refuseStrict(400, "a line ends in a bare LF: end every line with CRLF")
	}
	line = p.buf[p.pos : end-1]
	p.pos = end + 1
	return line, true, nil
}

// fields parses field lines up to the empty line into dst. It returns the
// fields, what Connection says, ok false when buf does not hold the whole
// section yet.
func (p *headParser) fields(dst []Field, max int) ([]Field, bool, *Error) {
	for {
		line, ok, err := p.line()
		if !ok {
			return dst, false, err
		}
		if len(line) == 0 {
			return dst, true, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return dst, false, refuseStrict(400, "an obs-fold continuation line (a field line starting with whitespace): send each field on one line")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return dst, false, refuse(400, "a field line without a name and colon: "+quote(line))
		}
		name := line[:colon]
		for _, c := range name {
			if !isToken(c) {
				if c == ' ' || c == '\t' {
					return dst, false, refuseStrict(400, "whitespace before the colon of field "+quote(bytes.TrimRight(name, " \t")))
				}
				return dst, false, refuse(400, "field name "+quote(name)+" has a character a field name cannot hold")
			}
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if !isFieldValueByte(c) {
				return dst, false, refuse(400, "the value of field "+quote(name)+" has a control character")
			}
		}
		if len(dst) == max {
			return dst, false, refuse(431, "more than "+strconv.Itoa(max)+" header fields")
		}
		dst = append(dst, Field{Name: name, Value: value})
	}
}

// framing reads a message's body framing (as Content-Length and
// Transfer-Encoding say) and connection options from its fields.
func framing(fields []Field, minor byte) (Body, connection, *Error) {
	body := Body{Length: -1}
	var conn connection
	var lengths, encodings int
	for _, f := range fields {
		switch {
		case EqualFold(f.Name, "content-length"):
			if lengths++; lengths > 1 {
				return body, conn, refuseStrict(400, "more than one Content-Length field: send one")
			}
			n, ok := parseLength(f.Value)
			if !ok {
				return body, conn, refuse(400, "Content-Length "+quote(f.Value)+" is not a length in decimal digits")
			}
			body.Length = n
		case EqualFold(f.Name, "transfer-encoding"):
			if encodings++; encodings > 1 || !EqualFold(f.Value, "chunked") {
				// 400, not RFC 9112 6.1's 501: a coding listed with chunked
				// is a framing a server behind the proxy may read otherwise.
				return body, conn, refuseStrict(400, "Transfer-Encoding other than a single chunked: only chunked is accepted")
			}
			body.Chunked = true
		case EqualFold(f.Name, "connection"):
			for _, tok := range bytes.Split(f.Value, []byte{','}) {
				tok = trimOWS(tok)
				conn.close = conn.close || EqualFold(tok, "close")
				conn.keepAlive = conn.keepAlive || EqualFold(tok, "keep-alive")
				conn.upgrade = conn.upgrade || EqualFold(tok, "upgrade")
			}
		}
	}
	switch {
	case lengths > 0 && encodings > 0:
		return body, conn, refuseStrict(400, "both Content-Length and Transfer-Encoding: send one of them")
	case encodings > 0 && minor == 0:
		return body, conn, refuseStrict(400, "Transfer-Encoding in an HTTP/1.0 message")
	case encodings > 0:
		body.Length = -1
	}
	return body, conn, nil
}

// parseLength parses 1 to 18 decimal digits (any int64 that fits).
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseVersion parses "HTTP/1.0" or "HTTP/1.1" into its minor version.
func parseVersion(v []byte) (byte, *Error) {
	if len(v) == 8 && string(v[:7]) == "HTTP/1." && (v[7] == '0' || v[7] == '1') {
		return v[7] - '0', nil
	}
	if len(v) == 8 && string(v[:5]) == "HTTP/" && isDigit(v[5]) && v[6] == '.' && isDigit(v[7]) {
		return 0, refuseStrict(505, "HTTP version "+quote(v)+" is not supported: send HTTP/1.1")
	}
	return 0, refuse(400, "malformed HTTP version "+quote(v))
}

// EqualFold reports whether b is lower, ignoring ASCII case; lower must
// be lower case.
func EqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// quote quotes at most 64 bytes of b for an error message.
func quote(b []byte) string {
	if len(b) > 64 {
		return strconv.Quote(string(b[:64])) + "..."
	}
	return strconv.Quote(string(b))
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether c is a tchar (RFC 9110 5.6.2).
func isToken(c byte) bool { return tokenTable[c] }

// isFieldValueByte reports whether c may appear in a field value: VCHAR,
// obs-text, SP and HTAB (RFC 9110 5.5).
func isFieldValueByte(c byte) bool { return c == '\t' || c >= 0x20 && c != 0x7f }

var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// LowerName is field name b in lower case, as HTTP/2 carries names. The
// names most messages carry come from a table, without an allocation.
func LowerName(b []byte) string {
	var buf [32]byte
	if len(b) <= len(buf) {
		lower := buf[:len(b)]
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			lower[i] = c
		}
		if s, ok := commonNames[string(lower)]; ok { // no copy for the lookup
			return s
		}
		return string(lower)
	}
	return string(bytes.ToLower(b))
}

// commonNames are the field names LowerName hands out without copying.
var commonNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{"accept", "accept-encoding", "accept-language", "accept-ranges", "age",
		"authorization", "cache-control", "connection", "content-encoding", "content-length",
		"content-type", "cookie", "date", "etag", "expires", "grpc-status", "grpc-message", "host",
		"if-modified-since", "if-none-match", "keep-alive", "last-modified", "location", "origin",
		"referer", "server", "set-cookie", "te", "trailer", "transfer-encoding", "upgrade",
		"user-agent", "vary", "via", "x-forwarded-for", "x-forwarded-proto", "x-request-id",
		"traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-trellis-peer"} {
		m[n] = n
	}
	return m
}()

// Method is a request's method as a string; the registered methods come
// from a table, without an allocation.
func Method(b []byte) string {
	switch string(b) {
	case "GET":
		return "GET"
	case "HEAD":
		return "HEAD"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "DELETE":
		return "DELETE"
	case "PATCH":
		return "PATCH"
	case "OPTIONS":
		return "OPTIONS"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return string(b)
}
