package authn

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/internal/authz"
)

// Spec is a RequestAuthentication's spec (security.istio.io/v1 and
// v1beta1), in Istio's field names. Policies that apply to one workload
// have their JWTRules concatenated before Compile, as Istio merges them.
type Spec struct {
	Selector   *authz.Selector   `json:"selector,omitempty"`
	TargetRefs []authz.TargetRef `json:"targetRefs,omitempty"`
	JWTRules   []JWTRule         `json:"jwtRules,omitempty"`
}

// JWTRule accepts the tokens of one issuer: where they are carried, the
// keys that sign them and what the proxy does with a verified one.
type JWTRule struct {
	// Issuer is the exact iss a token must carry. Required.
	Issuer string `json:"issuer"`
	// Audiences, when set, must contain one of the token's aud; empty
	// means aud is not checked.
	Audiences []string `json:"audiences,omitempty"`
	// JWKSURI is where the control plane fetches the signing keys:
	// https, or http to a loopback host. Give JWKSURI or JWKS, not both.
	JWKSURI string `json:"jwksUri,omitempty"`
	// JWKS is the key set inline, as a JSON string.
	JWKS string `json:"jwks,omitempty"`
	// FromHeaders, FromParams and FromCookies say where tokens are; with
	// none of them, the Authorization header after "Bearer " and the
	// access_token query parameter.
	FromHeaders []JWTHeader `json:"fromHeaders,omitempty"`
	FromParams  []string    `json:"fromParams,omitempty"`
	FromCookies []string    `json:"fromCookies,omitempty"`
	// ForwardOriginalToken keeps a verified token in the request passed
	// to the workload; by default it is removed.
	ForwardOriginalToken bool `json:"forwardOriginalToken,omitempty"`
	// OutputPayloadToHeader, when set, names a header that receives the
	// verified payload, base64url-encoded without padding.
	OutputPayloadToHeader string `json:"outputPayloadToHeader,omitempty"`
	// OutputClaimToHeaders copies claims into headers.
	OutputClaimToHeaders []ClaimToHeader `json:"outputClaimToHeaders,omitempty"`
}

// JWTHeader is a header carrying a token after Prefix (matched without
// regard to case, e.g. "Bearer "); an empty Prefix takes the whole value.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

// ClaimToHeader copies one claim, a string, number or boolean, into
// Header. Claim names a top-level claim, or a nested one as "a.b".
type ClaimToHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}

// Check validates a spec: what Compile would refuse, and the targeting
// the proxy cannot honour. Keys behind a jwksUri are the Fetcher's to
// check.
func Check(s Spec) error {
	if s.Selector != nil && len(s.TargetRefs) > 0 {
		return errors.New("selector and targetRefs: give one of them")
	}
	for i, ref := range s.TargetRefs {
		if ref.Kind != "Service" || (ref.Group != "" && ref.Group != "core") {
			return fmt.Errorf("targetRefs[%d]: kind %q of group %q: only a Service (group \"\") can be targeted", i, ref.Kind, ref.Group)
		}
	}
	for i, r := range s.JWTRules {
		if _, err := compileRule(r); err != nil {
			return fmt.Errorf("jwtRules[%d].%w", i, err)
		}
	}
	return nil
}

// checkRule validates r's fields other than the inline keys. Its errors
// start with the field's name, for the caller to prefix with the rule's.
func checkRule(r JWTRule) error {
	switch {
	case r.Issuer == "":
		return errors.New("issuer: empty: set it to the iss claim of the tokens this rule accepts")
	case r.JWKS != "" && r.JWKSURI != "":
		return errors.New("jwks and jwksUri: give one of them")
	case r.JWKS == "" && r.JWKSURI == "":
		return errors.New("jwksUri: empty: give jwksUri (the issuer's key set URL) or jwks (the key set inline)")
	}
	if r.JWKSURI != "" {
		if err := checkURI(r.JWKSURI); err != nil {
			return fmt.Errorf("jwksUri: %w", err)
		}
	}
	for i, h := range r.FromHeaders {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return fmt.Errorf("fromHeaders[%d].name: %q is not a valid header name", i, h.Name)
		}
	}
	for i, p := range r.FromParams {
		if p == "" {
			return fmt.Errorf("fromParams[%d]: empty: name a query parameter", i)
		}
	}
	for i, c := range r.FromCookies {
		// A cookie name is an HTTP token, like a header name.
		if !httpguts.ValidHeaderFieldName(c) {
			return fmt.Errorf("fromCookies[%d]: %q is not a valid cookie name", i, c)
		}
	}
	if h := r.OutputPayloadToHeader; h != "" && !httpguts.ValidHeaderFieldName(h) {
		return fmt.Errorf("outputPayloadToHeader: %q is not a valid header name", h)
	}
	for i, c := range r.OutputClaimToHeaders {
		if !httpguts.ValidHeaderFieldName(c.Header) {
			return fmt.Errorf("outputClaimToHeaders[%d].header: %q is not a valid header name", i, c.Header)
		}
		if c.Claim == "" {
			return fmt.Errorf("outputClaimToHeaders[%d].claim: empty: name the claim to copy", i)
		}
	}
	return nil
}

// checkURI accepts https, and http only to a loopback host: keys fetched
// in the clear elsewhere could be replaced on the way, and whoever
// replaces them can sign any token.
func checkURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL: write https://HOST/PATH", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q: use https; http is allowed only to a loopback host (127.0.0.0/8, ::1, localhost)", s)
	}
	return fmt.Errorf("%q: scheme %q: use https", s, u.Scheme)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
