package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"slices"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// The differential tests parse the same bytes with this codec and with
// net/http (the reader its server uses, plus the checks its server adds
// after reading) and require them to agree: whatever net/http refuses is
// refused here, and what both accept has the same method, target,
// version, fields and framing. Where this codec refuses what net/http
// accepts, the refusal must be marked Strict (deliberate, listed in the
// package doc).

var seedRequests = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /q?x=1 HTTP/1.1\r\nHost: db:8080\r\nContent-Length: 5\r\n\r\nhello",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"GET http://svc.ns:80/p HTTP/1.1\r\nHost: other\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"CONNECT a:443 HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"\rT / HTTP/1.1\r\nHost:\nX:\n\n", // a lone CR first is no empty line
}

func FuzzRequestAgainstNetHTTP(f *testing.F) {
	for _, s := range seedRequests {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Request
		n, err := ParseRequest(data, Limits{}, &r)
		if n == 0 && err == nil {
			return // incomplete: nothing to compare
		}
		// The codec skips empty lines (CRLF) before the request line, as
		// RFC 9112 2.2 asks; net/http's server does only after a POST. A
		// lone CR or LF is no empty line: it stays, for both to read.
		skip := 0
		for bytes.HasPrefix(data[skip:], []byte("\r\n")) {
			skip += 2
		}
		head := data[skip:]
		if n > 0 {
			head = data[skip:n]
		}
		req, nerr := netHTTPReadRequest(head)
		if bothAccept(t, "ParseRequest", data, err, nerr, 400, 431, 501, 505) {
			compareRequest(t, data, &r, req)
		}
	})
}

// bothAccept holds the codec's verdict on data (err) to net/http's (nerr)
// and reports whether both accepted it, so that what they read can be
// compared. A refusal must be an *Error with one of statuses; one that
// net/http would not make must be marked Strict.
func bothAccept(t *testing.T, fn string, data []byte, err, nerr error, statuses ...int) bool {
	t.Helper()
	var herr *Error
	switch {
	case err != nil && !errors.As(err, &herr):
		t.Fatalf("%s(%q) returned %T %v, want an *Error", fn, data, err, err)
	case err != nil && !slices.Contains(statuses, herr.Status):
		t.Fatalf("%s(%q) refused it with status %d, want one of %v", fn, data, herr.Status, statuses)
	case err != nil && nerr == nil && !herr.Strict:
		t.Fatalf("%s(%q) refused it (%v), net/http accepts it, and the refusal is not marked Strict", fn, data, err)
	case err == nil && nerr != nil:
		t.Fatalf("%s(%q) accepted it, net/http refuses it: %v", fn, data, nerr)
	}
	return err == nil
}

// netHTTPReadRequest reads a request as net/http's server does.
func netHTTPReadRequest(head []byte) (*http.Request, error) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		return nil, err
	}
	// The server's checks after reading (net/http server.go readRequest).
	if req.ProtoMajor != 1 {
		return nil, errors.New("unsupported protocol version")
	}
	// ReadRequest moves the Host field to req.Host; the server checks
	// the field as read.
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
	if _, err := tp.ReadLine(); err != nil {
		return nil, err
	}
	fields, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	hosts, haveHost := fields["Host"]
	if req.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && req.Method != "CONNECT" {
		return nil, errors.New("missing required Host header")
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return nil, errors.New("malformed Host header")
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, errors.New("invalid header name")
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, errors.New("invalid header value")
			}
		}
	}
	return req, nil
}

func compareRequest(t *testing.T, data []byte, r *Request, req *http.Request) {
	t.Helper()
	if string(r.Method) != req.Method || string(r.Target) != req.RequestURI || int(r.Minor) != req.ProtoMinor {
		t.Errorf("ParseRequest(%q): %s %s HTTP/1.%d, net/http: %s %s %s", data, r.Method, r.Target, r.Minor, req.Method, req.RequestURI, req.Proto)
	}
	if string(r.Host) != req.Host {
		t.Errorf("ParseRequest(%q): host %q, net/http %q", data, r.Host, req.Host)
	}
	want := req.Header.Clone()
	if len(req.TransferEncoding) > 0 {
		want["Transfer-Encoding"] = req.TransferEncoding
	}
	if pragma := req.Header.Get("Pragma"); pragma == "no-cache" && r.Field("cache-control") == nil {
		delete(want, "Cache-Control") // net/http adds it
	}
	got := http.Header{}
	for _, f := range r.Fields {
		got[textproto.CanonicalMIMEHeaderKey(string(f.Name))] = append(got[textproto.CanonicalMIMEHeaderKey(string(f.Name))], string(f.Value))
	}
	if h, ok := got["Host"]; ok {
		want["Host"] = h // ReadRequest takes it out of the fields (compared as Host above)
	}
	if !headersEqual(got, want) {
		t.Errorf("ParseRequest(%q): fields %v, net/http %v", data, got, want)
	}
	chunked := slices.Equal(req.TransferEncoding, []string{"chunked"})
	wantLength := req.ContentLength
	if chunked || r.Body.Length < 0 && wantLength == 0 {
		wantLength = -1
	}
	if r.Body.Chunked != chunked || r.Body.Length != wantLength {
		t.Errorf("ParseRequest(%q): body %+v, net/http length %d chunked %v", data, r.Body, req.ContentLength, chunked)
	}
	if r.Close != req.Close {
		t.Errorf("ParseRequest(%q): Close %v, net/http %v", data, r.Close, req.Close)
	}
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

var seedResponses = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"HTTP/1.0 200 OK\r\n\r\nuntil close",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
	"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"HTTP/1.1 200\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	"HTTP/1.1 999 X\r\n\r\n",
}

func FuzzResponseAgainstNetHTTP(f *testing.F) {
	for _, s := range seedResponses {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		var r Response
		n, err := ParseResponse(data, Limits{}, head, &r)
		if n == 0 && err == nil {
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		end := len(data)
		if n > 0 {
			end = n
		}
		resp, nerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(data[:end])), &http.Request{Method: method})
		if nerr == nil && resp.ProtoMajor != 1 {
			nerr = errors.New("not HTTP/1")
		}
		if !bothAccept(t, "ParseResponse", data, err, nerr, 502) {
			return
		}
		if r.Status != resp.StatusCode || int(r.Minor) != resp.ProtoMinor {
			t.Errorf("ParseResponse(%q): %d HTTP/1.%d, net/http %d %s", data, r.Status, r.Minor, resp.StatusCode, resp.Proto)
		}
		chunked := slices.Equal(resp.TransferEncoding, []string{"chunked"})
		noBody := head || r.Status < 200 || r.Status == 204 || r.Status == 304
		switch {
		case noBody && !r.Body.None():
			t.Errorf("ParseResponse(%q): body %+v, want none", data, r.Body)
		case noBody:
		case r.Body.Chunked != chunked:
			t.Errorf("ParseResponse(%q): chunked %v, net/http %v", data, r.Body.Chunked, chunked)
		case r.Body.Length >= 0 && r.Body.Length != resp.ContentLength:
			t.Errorf("ParseResponse(%q): length %d, net/http %d", data, r.Body.Length, resp.ContentLength)
		case r.Body.UntilClose && !resp.Close:
			t.Errorf("ParseResponse(%q): a body until close, net/http does not close", data)
		}
	})
}

func FuzzChunksAgainstNetHTTP(f *testing.F) {
	for _, s := range []string{"5\r\nhello\r\n0\r\n\r\n", "3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", "5\nhello\n0\n\n", "0x5\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		// Fed in pieces of step bytes, as a connection might deliver them.
		var c Chunks
		var body []byte
		pending, rest := []byte(nil), data
		done := false
		var err error
		for !done && err == nil {
			take := min(int(step)+1, len(rest))
			pending, rest = append(pending, rest[:take]...), rest[take:]
			for {
				var d []byte
				var n int
				d, n, done, err = c.Next(pending)
				body = append(body, d...)
				pending = pending[n:]
				if n == 0 || done || err != nil {
					break
				}
			}
			if take == 0 {
				break
			}
		}
		if err == nil && !done {
			return // incomplete
		}
		if err != nil && c.state == chunkTrailers {
			return // net/http's chunked reader leaves the trailers to its caller
		}
		want, nerr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(data)))
		if bothAccept(t, "Chunks.Next", data, err, nerr, 400) && !bytes.Equal(body, want) {
			t.Fatalf("Chunks.Next(%q) decoded %q, net/http %q", data, body, want)
		}
	})
}
