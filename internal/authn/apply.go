package authn

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/internal/authz"
)

// Result is a request's authentication.
type Result struct {
	// Auth is the verified token, for authz.Request.Auth; nil when the
	// request carried none. With several tokens, it is the first found.
	Auth *authz.Auth

	verified []verified
	outputs  []string
}

// verified is a token that passed, with the rule that passed it.
type verified struct {
	loc     location
	rule    *rule
	payload []byte
	claims  *claims
}

// Apply edits r, the request about to be forwarded to the workload, as
// the rules say: it removes each verified token unless its rule forwards
// it, and sets the payload and claim headers. It first deletes every
// header any rule outputs, so a client cannot forge them on a request
// without a token (Istio leaves them). A query parameter is removed
// from r.URL.RawQuery, not from r.Form or r.RequestURI. Call it on the
// request's goroutine; nil Result does nothing.
func (res *Result) Apply(r *http.Request) {
	if res == nil {
		return
	}
	for _, h := range res.outputs {
		r.Header.Del(h)
	}
	for _, v := range res.verified {
		rl := v.rule
		if !rl.forward {
			v.loc.remove(r)
		}
		if rl.payloadHeader != "" {
			r.Header.Set(rl.payloadHeader, base64.RawURLEncoding.EncodeToString(v.payload))
		}
		for _, c := range rl.claimHeaders {
			if s, ok := claimValue(v.claims.all, c.Claim); ok {
				r.Header.Set(c.Header, s)
			}
		}
	}
}

// claimValue returns a string, number or boolean claim as a header value;
// false for other types, and for a value a header cannot carry (CR, LF,
// NUL or other controls). A name with dots is a nested claim unless a
// top-level claim has that very name (URL-like names have dots).
func claimValue(claims map[string]any, name string) (string, bool) {
	v, ok := claims[name]
	if !ok {
		v = any(claims)
		for part := range strings.SplitSeq(name, ".") {
			m, isMap := v.(map[string]any)
			if !isMap {
				return "", false
			}
			v = m[part]
		}
	}
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case float64:
		s = strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		s = strconv.FormatBool(v)
	default:
		return "", false
	}
	return s, httpguts.ValidHeaderFieldValue(s)
}
