// Package proxy is the data plane of trellis-proxy: listeners, protocol
// detection and forwarding of HTTP/1.1, HTTP/2, gRPC and TCP between apps
// and sidecars. It is being built up piece by piece; today it holds protocol
// detection for ports whose Service declares no protocol, and the socket
// side of transparent capture (original destination, the proxy's own
// socket mark). internal/nft writes the capture rules.
package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"strings"
	"time"
)

// Protocol is what a connection speaks, as far as the proxy cares.
type Protocol int

// Detected protocols.
const (
	TCP   Protocol = iota // opaque bytes, including server-first protocols
	HTTP1                 // an HTTP/1.x request line
	HTTP2                 // the HTTP/2 prior-knowledge preface (h2c, gRPC)
	TLS                   // a TLS ClientHello
)

func (p Protocol) String() string {
	return [...]string{"tcp", "http/1.1", "http2", "tls"}[p]
}

// h2Preface starts every HTTP/2 connection with prior knowledge.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// httpMethods are the common request methods, recognised at once; any
// other method is recognised by the shape of its request line.
var httpMethods = []string{"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"}

// maxSniff bounds how many bytes detection may wait for.
const maxSniff = len(h2Preface)

// Sniff detects the protocol from the client's first bytes, read through br
// (which keeps them for whoever reads next). It waits at most wait for the
// client to speak: a server-first protocol (MySQL, SMTP) sends nothing, and
// is then TCP after that short delay. Ports with a declared protocol skip
// detection entirely. conn's read deadline is cleared on return.
func Sniff(conn net.Conn, br *bufio.Reader, wait time.Duration) (Protocol, error) {
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return TCP, err
	}
	defer conn.SetReadDeadline(time.Time{})
	for n := 1; ; {
		prefix, err := br.Peek(n)
		p, more := classify(prefix)
		if !more {
			return p, nil
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return p, nil // the client went quiet: decide on what we have
		case err != nil && len(prefix) < n:
			return p, err
		}
		// Ask for one byte more than is buffered, so Peek blocks only when
		// the client has not sent it yet.
		n = min(max(br.Buffered(), len(prefix))+1, maxSniff)
		if len(prefix) >= maxSniff {
			return p, nil
		}
	}
}

// classify decides from a prefix of the client's bytes. more is true while
// the prefix could still become a different protocol; p is then the best
// guess so far.
func classify(prefix []byte) (p Protocol, more bool) {
	if len(prefix) == 0 {
		return TCP, true
	}
	if prefix[0] == 0x16 { // TLS handshake record
		if len(prefix) < 3 {
			return TCP, true
		}
		if prefix[1] == 0x03 && prefix[2] <= 0x04 {
			return TLS, false
		}
		return TCP, false
	}
	if n := min(len(prefix), len(h2Preface)); bytes.Equal(prefix[:n], []byte(h2Preface[:n])) {
		if n == len(h2Preface) {
			return HTTP2, false
		}
		// "PRI" is also a possible HTTP/1 method prefix: keep reading.
		return TCP, true
	}
	for _, m := range httpMethods {
		token := m + " "
		if len(prefix) >= len(token) && bytes.Equal(prefix[:len(token)], []byte(token)) {
			return HTTP1, false
		}
	}
	return classifyRequestLine(prefix)
}

// maxMethod is the longest method a request line may start with for
// detection (WebDAV's VERSION-CONTROL is 15; QUERY, PROPFIND and
// extension methods are shorter).
const maxMethod = 20

// classifyRequestLine recognises any HTTP/1 request line, not only the
// common methods: a method token, a space, and a request target starting
// as one does ("/", "*" or an absolute "http"). An app's HTTP server
// accepts any token as a method, so anything it would parse as a request
// must take the HTTP path, where the identity headers are set by the
// sidecar rather than passed through.
func classifyRequestLine(prefix []byte) (p Protocol, more bool) {
	for i, c := range prefix {
		switch {
		case c == ' ' && i > 0:
			if i+1 == len(prefix) {
				return TCP, true // the target's first byte decides
			}
			if t := prefix[i+1]; t == '/' || t == '*' || t == 'h' || t == 'H' {
				return HTTP1, false
			}
			return TCP, false
		case !isTokenByte(c) || i >= maxMethod:
			return TCP, false
		}
	}
	return TCP, true
}

// isTokenByte reports whether c may appear in an HTTP token (RFC 9110).
func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
