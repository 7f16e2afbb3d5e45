package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// maxHeaderCount bounds the header fields of a request; the listeners'
// MaxHeaderBytes bounds their size.
const maxHeaderCount = 100

// checkRequest refuses what must not be forwarded and normalises the path,
// before the request is routed. It answers a request it refuses (flag DPE,
// downstream protocol error, with the reason in ex) and returns false.
func checkRequest(w http.ResponseWriter, r *http.Request, ex *exchange) bool {
	refuse := func(code int, reason string) {
		w.Header().Set("Connection", "close")
		failWith(w, ex, code, "DPE", reason)
	}
	n := 0
	for _, v := range r.Header {
		n += len(v)
	}
	if n > maxHeaderCount {
		refuse(http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("%d header fields; at most %d are accepted", n, maxHeaderCount))
		return false
	}
	// Only a path (origin form), an absolute URL or OPTIONS * are
	// forwarded: any other target (CONNECT's authority form, a rootless
	// "GET admin") has no path for policies to match, and apps read it as
	// they like.
	// HTTP/2 lets a method or :path hold spaces; written into an
	// HTTP/1.1 request line they would make the app read another target
	// than the one policies matched.
	if !httpguts.ValidHeaderFieldName(r.Method) {
		refuse(http.StatusBadRequest, "the method is not a token (RFC 9110 9.1)")
		return false
	}
	if strings.ContainsRune(r.RequestURI, ' ') {
		refuse(http.StatusBadRequest, "a space in the request target; send it percent-encoded (%20)")
		return false
	}
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		return true
	}
	if r.Method == http.MethodConnect || r.URL.Opaque != "" {
		refuse(http.StatusBadRequest, "the request target is not a path: send an origin-form target (/PATH) or an absolute URL")
		return false
	}
	if strings.ContainsRune(r.RequestURI, '#') { // as sent; the parsed path has it escaped
		refuse(http.StatusBadRequest, "a fragment (#...) in the request target; clients must not send one")
		return false
	}
	p, err := NormalizePath(r.URL.EscapedPath())
	if err != nil {
		refuse(http.StatusBadRequest, err.Error())
		return false
	}
	if p != r.URL.EscapedPath() {
		decoded, err := url.PathUnescape(p)
		if err != nil {
			refuse(http.StatusBadRequest, "path: "+err.Error())
			return false
		}
		r.URL.Path, r.URL.RawPath = decoded, p
		r.RequestURI = r.URL.RequestURI()
	}
	return true
}

// NormalizePath is what the app receives for an escaped request path, as
// Istio's default (BASE) normalisation: percent-encoded unreserved
// characters are decoded and other escapes upper-cased, then "." and ".."
// segments are resolved (RFC 3986, 5.2.4). Encoded slashes and backslashes
// (%2F, %5C) stay encoded and "//" stays as is, so the app sees the
// segments the client meant. A fragment is refused: clients never send one.
func NormalizePath(escaped string) (string, error) {
	if escaped == "" {
		return "/", nil
	}
	if !strings.HasPrefix(escaped, "/") {
		return "", fmt.Errorf("path %q does not start with /", escaped)
	}
	if strings.ContainsRune(escaped, '#') {
		return "", errors.New("a fragment (#...) in the request path; clients must not send one")
	}
	if normal(escaped) {
		return escaped, nil // the common case, without a copy
	}
	var b strings.Builder
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
			return "", fmt.Errorf("path %q has a malformed percent-escape", escaped)
		}
		v := unhex(escaped[i+1])<<4 | unhex(escaped[i+2])
		if isUnreserved(v) {
			b.WriteByte(v)
		} else {
			fmt.Fprintf(&b, "%%%02X", v)
		}
		i += 2
	}
	return removeDotSegments(b.String()), nil
}

// normal reports whether an absolute path is its own normal form: no
// percent-escape and no "." or ".." segment.
func normal(p string) bool {
	if strings.IndexByte(p, '%') >= 0 {
		return false
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// removeDotSegments is RFC 3986's algorithm for an absolute path: it never
// merges empty segments and never climbs above the root.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
