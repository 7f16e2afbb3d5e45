package h1

import "bytes"

// Response is a parsed response head. Its byte slices point into the
// buffer ParseResponse was given.
type Response struct {
	Status int
	Reason []byte
	Minor  byte
	Fields []Field
	Body   Body
	// Close: the connection ends after this response (Connection: close,
	// HTTP/1.0 without keep-alive, or a body that runs until close).
	Close bool
}

// Field returns the value of the first field named name (lower case), or
// nil.
func (r *Response) Field(name string) []byte { return lookup(r.Fields, name) }

// ParseResponse parses the response head at the start of buf into r,
// whose Fields slice it reuses; head says the request was a HEAD, whose
// response has no body whatever its fields say. It returns as
// ParseRequest does; an *Error's Status is then 502, what the client of a
// proxy is answered when the server's response cannot be relayed.
func ParseResponse(buf []byte, lim Limits, head bool, r *Response) (int, error) {
	*r = Response{Fields: r.Fields[:0]}
	p := headParser{buf: buf, limit: lim.maxHead()}
	line, ok, err := p.line()
	if !ok {
		return 0, badGateway(err)
	}
	if err := r.statusLine(line); err != nil {
		return 0, badGateway(err)
	}
	r.Fields, ok, err = p.fields(r.Fields, lim.maxFields())
	if !ok {
		return 0, badGateway(err)
	}
	body, conn, err := framing(r.Fields, r.Minor)
	if err != nil {
		return 0, badGateway(err)
	}
	// RFC 9112 6.3: no body after HEAD, 1xx, 204 and 304; else chunked,
	// else Content-Length, else until the server closes.
	switch {
	case head || r.Status < 200 || r.Status == 204 || r.Status == 304:
		body = Body{Length: -1}
	case !body.Chunked && body.Length < 0:
		body.UntilClose = true
	}
	r.Body = body
	r.Close = conn.close || r.Minor == 0 && !conn.keepAlive || body.UntilClose
	return p.pos, nil
}

// badGateway turns a response's refusal into the proxy's answer to its
// client.
func badGateway(err *Error) error {
	if err == nil {
		return nil
	}
	err.Status = 502
	err.Reason = "the response " + err.Reason
	return err
}

// statusLine parses version SP 3DIGIT [SP reason].
func (r *Response) statusLine(line []byte) *Error {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return refuse(0, "status line "+quote(line)+" is malformed")
	}
	minor, err := parseVersion(line[:sp])
	if err != nil {
		return err
	}
	r.Minor = minor
	rest := line[sp+1:]
	if len(rest) < 3 || !isDigit(rest[0]) || !isDigit(rest[1]) || !isDigit(rest[2]) || rest[0] == '0' || len(rest) > 3 && rest[3] != ' ' {
		return refuseStrict(0, "status line "+quote(line)+" has no status code from 100 to 999")
	}
	r.Status = int(rest[0]-'0')*100 + int(rest[1]-'0')*10 + int(rest[2]-'0')
	if len(rest) > 3 {
		r.Reason = rest[4:]
	}
	for _, c := range r.Reason {
		if !isFieldValueByte(c) {
			return refuseStrict(0, "reason phrase has a control character")
		}
	}
	return nil
}
