package authn

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The spec's parts, in Istio's field names (see catalog).
type (
	Spec          = catalog.RequestAuthenticationSpec
	JWTRule       = catalog.JWTRule
	JWTHeader     = catalog.JWTHeader
	ClaimToHeader = catalog.ClaimToHeader
)

// Check validates a spec's rules: what Compile would refuse. Keys behind
// a jwksUri are the Fetcher's to check; the selector and targetRefs,
// authz.Scope's.
func Check(s Spec) error {
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
