package h1

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // method target minor host length chunked close upgrade, or "refused STATUS"
	}{
		{"get", "GET /a?b=c HTTP/1.1\r\nHost: svc:80\r\n\r\n", "GET /a?b=c 1 svc:80 -1 false false false"},
		{"content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", "POST / 1 a 12 false false false"},
		{"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", "POST / 1 a -1 true false false"},
		{"absolute form names the host", "GET http://svc.ns:8080/x HTTP/1.1\r\nHost: other\r\n\r\n", "GET http://svc.ns:8080/x 1 svc.ns:8080 -1 false false false"},
		{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", "GET / 0  -1 false true false"},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET / 0  -1 false false false"},
		{"connection close", "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", "GET / 1 a -1 false true false"},
		{"upgrade", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "GET / 1 a -1 false false true"},
		{"upgrade field without connection", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", "GET / 1 a -1 false false false"},
		{"connect", "CONNECT db:5432 HTTP/1.1\r\n\r\n", "CONNECT db:5432 1 db:5432 -1 false false false"},
		{"options *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS * 1 a -1 false false false"},
		{"leading empty line", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / 1 a -1 false false false"},
		{"reg-name host", "GET / HTTP/1.1\r\nHost: my_host~1\r\n\r\n", "GET / 1 my_host~1 -1 false false false"},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "GET / 1 [::1]:80 -1 false false false"},

		{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", "refused 400"},
		{"bare LF in a field", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "refused 400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", "refused 400"},
		{"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "refused 400"},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "refused 400"},
		{"two CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "refused 400"},
		{"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "refused 400"},
		{"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", "refused 400"},
		{"CL too long", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n", "refused 400"},
		{"TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "refused 400"},
		{"TE twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "refused 400"},
		{"TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "refused 400"},
		{"fragment", "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"bad escape", "GET /a%2 HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"rootless target", "GET admin HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"non-ascii target", "GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"userinfo", "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"no host", "GET / HTTP/1.1\r\n\r\n", "refused 400"},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "refused 400"},
		{"bad host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "refused 400"},
		{"control char in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "refused 400"},
		{"bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "refused 400"},
		{"http/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", "refused 505"},
		{"http/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", "refused 505"},
		{"bad version", "GET / HTTX/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"star for GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"connect to a path", "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", "refused 400"},
		{"too many fields", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", 100) + "\r\n", "refused 431"},
		{"head too large", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", 64<<10) + "\r\n\r\n", "refused 431"},
		{"head too large, incomplete", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", 64<<10), "refused 431"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			n, err := ParseRequest([]byte(tc.in), Limits{}, &r)
			got := outcome(t, tc.in, n, err, func() []string {
				return []string{string(r.Method), string(r.Target), itoa(int(r.Minor)), string(r.Host),
					itoa(int(r.Body.Length)), bool2s(r.Body.Chunked), bool2s(r.Close), bool2s(r.Upgrade)}
			})
			if got != tc.want {
				t.Errorf("ParseRequest(%q) = %s (%v), want %s", tc.in, got, err, tc.want)
			}
		})
	}
}

// outcome describes a parse of the head in: "refused STATUS", or what
// accepted returns, joined by spaces.
func outcome(t *testing.T, in string, n int, err error, accepted func() []string) string {
	t.Helper()
	var herr *Error
	switch {
	case errors.As(err, &herr):
		return "refused " + itoa(herr.Status)
	case err != nil:
		t.Fatalf("parsing %q: %T %v, want an *Error", in, err, err)
	case n != len(in):
		t.Fatalf("parsing %q used %d bytes, want the whole head, %d", in, n, len(in))
	}
	return strings.Join(accepted(), " ")
}

// Every prefix of a valid head needs more bytes; none is refused or taken
// for a whole head.
func TestParseRequestIncomplete(t *testing.T) {
	in := "\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
	var r Request
	for i := range len(in) {
		if n, err := ParseRequest([]byte(in[:i]), Limits{}, &r); n != 0 || err != nil {
			t.Fatalf("ParseRequest(%q) = %d, %v, want 0, nil (needs more)", in[:i], n, err)
		}
	}
}

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		head     bool
		want     string // status length chunked untilClose close, or "refused STATUS"
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false, "200 2 false false false"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, "200 -1 true false false"},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", false, "200 -1 false true true"},
		{"no reason", "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false, "404 0 false false false"},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, "200 -1 false false false"},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", false, "204 -1 false false false"},
		{"304 with length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, "304 -1 false false false"},
		{"100", "HTTP/1.1 100 Continue\r\n\r\n", false, "100 -1 false false false"},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, "200 1 false false true"},

		{"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false, "refused 502"},
		{"two CL", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, "refused 502"},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 1\n\n", false, "refused 502"},
		{"bad status", "HTTP/1.1 2000 OK\r\n\r\n", false, "refused 502"},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", false, "refused 502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Response
			n, err := ParseResponse([]byte(tc.in), Limits{}, tc.head, &r)
			got := outcome(t, tc.in, n, err, func() []string {
				return []string{itoa(r.Status), itoa(int(r.Body.Length)), bool2s(r.Body.Chunked), bool2s(r.Body.UntilClose), bool2s(r.Close)}
			})
			if got != tc.want {
				t.Errorf("ParseResponse(%q) = %s (%v), want %s", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestChunks(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // the body and trailers, or "refused"
	}{
		{"two chunks", "5\r\nhello\r\n6;ext=\"x\"\r\n world\r\n0\r\n\r\n", "hello world"},
		{"trailers", "2\r\nok\r\n0\r\nGrpc-Status: 0\r\nX: y\r\n\r\n", "ok Grpc-Status=0 X=y"},
		{"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789"},
		{"bare LF size line", "5\nhello\r\n0\r\n\r\n", "refused"},
		{"no CRLF after data", "5\r\nhelloX\r\n0\r\n\r\n", "refused"},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", "refused"},
		{"sign", "+5\r\nhello\r\n0\r\n\r\n", "refused"},
		{"space in size", "5 \r\nhello\r\n0\r\n\r\n", "refused"},
		{"size too long", "1000000000000000\r\n", "refused"},
		{"empty size", "\r\n", "refused"},
		{"size line too long", "5;" + strings.Repeat("x", 2000), "refused"},
		{"bare LF trailer", "0\r\nX: y\n\r\n", "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Whole, and a byte at a time.
			for _, step := range []int{len(tc.in), 1} {
				if got := decodeChunks(tc.in, step); got != tc.want {
					t.Errorf("decoding %q %d bytes at a time = %q, want %q", tc.in, step, got, tc.want)
				}
			}
		})
	}
}

func decodeChunks(in string, step int) string {
	var c Chunks
	var body, pending []byte
	for rest := []byte(in); ; {
		take := min(step, len(rest))
		pending, rest = append(pending, rest[:take]...), rest[take:]
		for {
			data, n, done, err := c.Next(pending)
			if err != nil {
				return "refused"
			}
			body = append(body, data...)
			pending = pending[n:]
			if done {
				out := string(body)
				for _, f := range c.Trailers {
					out += " " + string(f.Name) + "=" + string(f.Value)
				}
				return out
			}
			if n == 0 {
				break
			}
		}
		if take == 0 {
			return "incomplete"
		}
	}
}

func itoa(n int) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func bool2s(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// The parsers allocate nothing per message once the Fields slice has
// grown (go test -bench . -benchmem).
func BenchmarkParseRequest(b *testing.B) {
	in := []byte("POST /graph.Graph/Query?x=1 HTTP/1.1\r\nHost: graphdb.demo.svc:8080\r\nUser-Agent: fortio.org/fortio-1.66.2\r\nContent-Type: application/json\r\nContent-Length: 64\r\nX-Request-Id: 6f1c2b8e-1d3a-4d8e-9a1b-2c3d4e5f6a7b\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
	var r Request
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if n, err := ParseRequest(in, Limits{}, &r); n != len(in) || err != nil {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkParseResponse(b *testing.B) {
	in := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 128\r\nDate: Fri, 04 Dec 2026 11:20:33 GMT\r\n\r\n")
	var r Response
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if n, err := ParseResponse(in, Limits{}, false, &r); n != len(in) || err != nil {
			b.Fatal(n, err)
		}
	}
}

func TestParsersDoNotAllocate(t *testing.T) {
	in := []byte("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n")
	var r Request
	ParseRequest(in, Limits{}, &r)
	if n := testing.AllocsPerRun(100, func() { ParseRequest(in, Limits{}, &r) }); n != 0 {
		t.Errorf("ParseRequest allocates %v times per request, want 0", n)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
	var rr Response
	ParseResponse(resp, Limits{}, false, &rr)
	if n := testing.AllocsPerRun(100, func() { ParseResponse(resp, Limits{}, false, &rr) }); n != 0 {
		t.Errorf("ParseResponse allocates %v times per response, want 0", n)
	}
}

func TestLowerName(t *testing.T) {
	long := strings.Repeat("X-Long-", 6) + "Name"
	for _, c := range []struct{ in, want string }{
		{"Content-Length", "content-length"},
		{"content-type", "content-type"},
		{"X-Custom-Field", "x-custom-field"},
		{"X-TRELLIS-PEER", "x-trellis-peer"},
		{long, strings.ToLower(long)},
		{"", ""},
	} {
		if got := LowerName([]byte(c.in)); got != c.want {
			t.Errorf("LowerName(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = LowerName([]byte("User-Agent")) }); n != 0 {
		t.Errorf("LowerName(a common name) allocates %v times, want 0", n)
	}
	for _, m := range []string{"GET", "POST", "PROPFIND"} {
		if got := Method([]byte(m)); got != m {
			t.Errorf("Method(%q) = %q", m, got)
		}
	}
}
