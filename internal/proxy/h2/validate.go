package h2

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"
)

// The checks RFC 9113 8.2 and 8.3 ask of a header section beyond what the
// Framer does (field name case, pseudo-fields after regular ones, unknown
// or repeated pseudo-fields): a malformed one is a stream error.

var errMalformed = errors.New("h2: malformed header section")

// checkRequest checks a request's pseudo-fields and fields and returns
// its content-length (-1: none).
func checkRequest(f *http2.MetaHeadersFrame) (int64, error) {
	if err := checkFields(f); err != nil {
		return 0, err
	}
	method := f.PseudoValue("method")
	switch {
	case method == "":
		return 0, fmt.Errorf("%w: no :method", errMalformed)
	case f.PseudoValue("status") != "" || f.PseudoValue("protocol") != "":
		return 0, fmt.Errorf("%w: a response's pseudo-field, or :protocol (extended CONNECT is not enabled)", errMalformed)
	case method == "CONNECT":
		if f.PseudoValue("authority") == "" || f.PseudoValue("scheme") != "" || f.PseudoValue("path") != "" {
			return 0, fmt.Errorf("%w: CONNECT has :authority only", errMalformed)
		}
	case f.PseudoValue("scheme") == "" || f.PseudoValue("path") == "":
		return 0, fmt.Errorf("%w: no :scheme or :path", errMalformed)
	}
	return contentLength(f)
}

// checkFields refuses connection-specific fields and a TE other than
// "trailers".
func checkFields(f *http2.MetaHeadersFrame) error {
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return fmt.Errorf("%w: connection-specific field %q", errMalformed, hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return fmt.Errorf("%w: te %q", errMalformed, hf.Value)
			}
		}
	}
	return nil
}

// contentLength returns the content-length of a header section, -1 when
// it has none; several must agree.
func contentLength(f *http2.MetaHeadersFrame) (int64, error) {
	n := int64(-1)
	for _, hf := range f.RegularFields() {
		if hf.Name != "content-length" {
			continue
		}
		v, ok := parseDigits(hf.Value)
		if !ok || n >= 0 && v != n {
			return 0, fmt.Errorf("%w: content-length %q", errMalformed, hf.Value)
		}
		n = v
	}
	return n, nil
}

func parseDigits(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}
