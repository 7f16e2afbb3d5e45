// Package authn verifies the JWTs that Istio's RequestAuthentication
// describes. The destination sidecar compiles a workload's rules into an
// immutable Authenticator and runs each HTTP request through it before
// authorization (package authz), which reads the verified token as
// authz.Auth, and Result.Apply then takes the token out of the request
// forwarded and writes the rules' output headers. The control plane
// validates policies with Check and fetches the key sets behind jwksUri
// with a Fetcher, then pushes the keys to the proxies, which never fetch.
// Only the Fetcher does I/O; verification is pure, on the caller's clock.
//
// Semantics, as Istio (through Envoy's jwt_authn) has them: a request
// with no token passes unauthenticated; a request with a token passes only
// if every token found verifies, each under a rule that looks where it was
// found and whose issuer is the token's iss. A rule with no fromHeaders,
// fromParams or fromCookies looks in the Authorization header after
// "Bearer " and in the access_token query parameter. Signatures are RSA,
// RSA-PSS, ECDSA or Ed25519; exp and nbf, when present, are checked with
// ClockSkew of leeway; a rule's audiences, when given, must include one of
// the token's.
package authn

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/trellis-mesh/trellis/internal/authz"
)

const (
	// ClockSkew is the leeway on exp and nbf for clocks that disagree.
	ClockSkew = 60 * time.Second
	// MaxTokenSize caps a token; larger ones are refused unread.
	MaxTokenSize = 8 << 10
	// maxTokens caps the tokens verified for one request, as each costs
	// a signature check.
	maxTokens = 8
	// maxClaimDepth caps the nesting of objects and arrays in a payload.
	maxClaimDepth = 32
)

// Errors of Authenticate, wrapped with where the token was. Their text
// never holds the token's bytes, so the caller may send it back in its
// 401 response.
var (
	ErrTooManyTokens = errors.New("too many jwts in the request")
	ErrTooLarge      = errors.New("jwt is too large")
	ErrMalformed     = errors.New("jwt is not in the form of header.payload.signature with JSON header and payload")
	ErrAlgorithm     = errors.New("jwt algorithm is not allowed")
	ErrIssuer        = errors.New("jwt issuer is not configured")
	ErrNoKey         = errors.New("jwks doesn't have a key to match kid or alg from jwt")
	ErrSignature     = errors.New("jwt verification fails")
	ErrExpired       = errors.New("jwt is expired")
	ErrNotYetValid   = errors.New("jwt is not yet valid")
	ErrAudience      = errors.New("audiences in jwt are not allowed")
)

// Authenticator verifies a workload's tokens. It is immutable and safe
// for concurrent use; a nil Authenticator (no RequestAuthentication)
// passes every request unauthenticated.
type Authenticator struct {
	rules []rule
	// locs are where any rule looks, each once.
	locs []location
	// outputs are the headers any rule writes, stripped from every request.
	outputs []string
}

type rule struct {
	issuer        string
	audiences     []string
	locs          []location
	keys          []key
	forward       bool
	payloadHeader string
	claimHeaders  []ClaimToHeader
}

// Compile compiles the rules of the RequestAuthentications that apply to
// a workload. keys returns the key set fetched for a jwksUri, nil when
// there is none yet (keys itself may be nil): the rule then refuses every
// token of its issuer, so a missing key set fails closed. A rule that
// Check refuses, or a key set that is not valid, is an error naming it.
func Compile(rules []JWTRule, keys func(jwksURI string) []byte) (*Authenticator, error) {
	a := &Authenticator{}
	for i, r := range rules {
		rl, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("jwtRules[%d].%w", i, err)
		}
		if r.JWKSURI != "" && keys != nil {
			if data := keys(r.JWKSURI); data != nil {
				if rl.keys, err = parseJWKS(data); err != nil {
					return nil, fmt.Errorf("jwtRules[%d].jwksUri: keys from %s: %w", i, r.JWKSURI, err)
				}
			}
		}
		a.rules = append(a.rules, rl)
		for _, l := range rl.locs {
			if !slices.Contains(a.locs, l) {
				a.locs = append(a.locs, l)
			}
		}
		if rl.payloadHeader != "" {
			a.outputs = append(a.outputs, rl.payloadHeader)
		}
		for _, c := range rl.claimHeaders {
			a.outputs = append(a.outputs, c.Header)
		}
	}
	return a, nil
}

func compileRule(r JWTRule) (rule, error) {
	if err := checkRule(r); err != nil {
		return rule{}, err
	}
	rl := rule{
		issuer:        r.Issuer,
		audiences:     r.Audiences,
		locs:          locations(r),
		forward:       r.ForwardOriginalToken,
		payloadHeader: r.OutputPayloadToHeader,
		claimHeaders:  r.OutputClaimToHeaders,
	}
	if r.JWKS != "" {
		keys, err := parseJWKS([]byte(r.JWKS))
		if err != nil {
			return rule{}, fmt.Errorf("jwks: %w", err)
		}
		rl.keys = keys
	}
	return rl, nil
}

// Authenticate verifies the tokens in r at time now; it neither blocks
// nor changes r. On success the Result is non-nil, its Auth nil when r
// carries no token, and the caller applies it to the request it
// forwards. An error means a token failed: the caller answers 401 and
// may send the error's text.
func (a *Authenticator) Authenticate(r *http.Request, now time.Time) (*Result, error) {
	if a == nil {
		return &Result{}, nil
	}
	res := &Result{outputs: a.outputs}
	found := a.find(r)
	if len(found) > maxTokens {
		return nil, ErrTooManyTokens
	}
	for _, t := range found {
		v, err := a.verify(t, now)
		if err != nil {
			return nil, fmt.Errorf("verify the jwt in %s: %w", t.loc, err)
		}
		res.verified = append(res.verified, v)
	}
	if len(res.verified) > 0 {
		res.Auth = res.verified[0].claims.auth()
	}
	return res, nil
}

// verify checks one token against the rules that look where it was found
// and accept its issuer.
func (a *Authenticator) verify(t token, now time.Time) (verified, error) {
	if len(t.value) > MaxTokenSize {
		return verified{}, ErrTooLarge
	}
	jws, err := jose.ParseSignedCompact(t.value, algorithms)
	if err != nil {
		if _, ok := errors.AsType[*jose.ErrUnexpectedSignatureAlgorithm](err); ok {
			return verified{}, ErrAlgorithm
		}
		return verified{}, ErrMalformed
	}
	// Only the issuer is read before the signature is checked: it picks
	// the rule, hence the keys.
	payload := jws.UnsafePayloadWithoutVerification()
	c, err := parseClaims(payload)
	if err != nil {
		return verified{}, err
	}
	err = ErrIssuer
	for i := range a.rules {
		rl := &a.rules[i]
		if rl.issuer != c.iss || !slices.Contains(rl.locs, t.loc) {
			continue
		}
		if err = rl.check(jws, c, now); err == nil {
			return verified{loc: t.loc, rule: rl, payload: payload, claims: c}, nil
		}
	}
	return verified{}, err
}

func (rl *rule) check(jws *jose.JSONWebSignature, c *claims, now time.Time) error {
	h := jws.Signatures[0].Header
	alg := jose.SignatureAlgorithm(h.Algorithm)
	tried := false
	for _, k := range rl.keys {
		// A key without kid is a candidate for any token, as in Envoy.
		if (h.KeyID != "" && k.kid != "" && k.kid != h.KeyID) || !k.verifies(alg) {
			continue
		}
		tried = true
		if _, err := jws.Verify(k.pub); err == nil {
			return c.valid(now, rl.audiences)
		}
	}
	if !tried {
		return ErrNoKey
	}
	return ErrSignature
}

// claims are a payload's registered claims, read and type-checked.
type claims struct {
	all           map[string]any
	iss, sub, azp string
	aud           []string
	exp, nbf      *float64
}

func parseClaims(payload []byte) (*claims, error) {
	c := &claims{}
	if err := json.Unmarshal(payload, &c.all); err != nil || c.all == nil || tooDeep(c.all, 0) {
		return nil, ErrMalformed
	}
	ok := str(c.all, "iss", &c.iss) && str(c.all, "sub", &c.sub) && str(c.all, "azp", &c.azp) &&
		num(c.all, "exp", &c.exp) && num(c.all, "nbf", &c.nbf)
	switch aud := c.all["aud"].(type) {
	case nil:
	case string:
		c.aud = []string{aud}
	case []any:
		for _, v := range aud {
			s, isStr := v.(string)
			ok = ok && isStr
			c.aud = append(c.aud, s)
		}
	default:
		ok = false
	}
	if !ok {
		return nil, ErrMalformed
	}
	return c, nil
}

// str reads an optional string claim; false if it is of another type.
func str(m map[string]any, name string, into *string) bool {
	v, ok := m[name]
	if !ok {
		return true
	}
	*into, ok = v.(string)
	return ok
}

// num reads an optional numeric claim; false if it is of another type.
func num(m map[string]any, name string, into **float64) bool {
	v, ok := m[name]
	if !ok {
		return true
	}
	f, ok := v.(float64)
	*into = &f
	return ok
}

func tooDeep(v any, depth int) bool {
	if depth > maxClaimDepth {
		return true
	}
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			if tooDeep(e, depth+1) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if tooDeep(e, depth+1) {
				return true
			}
		}
	}
	return false
}

// valid checks the times and the audience of a verified token.
func (c *claims) valid(now time.Time, audiences []string) error {
	t, skew := float64(now.Unix()), ClockSkew.Seconds()
	if c.exp != nil && t >= *c.exp+skew {
		return ErrExpired
	}
	if c.nbf != nil && t+skew < *c.nbf {
		return ErrNotYetValid
	}
	if len(audiences) > 0 && !slices.ContainsFunc(c.aud, func(a string) bool {
		return slices.ContainsFunc(audiences, func(want string) bool { return sameAudience(a, want) })
	}) {
		return ErrAudience
	}
	return nil
}

// sameAudience compares audiences as Envoy does: without an http:// or
// https:// prefix and a trailing slash, so "https://api.example.com/" and
// "api.example.com" are the same.
func sameAudience(a, b string) bool {
	return bareAudience(a) == bareAudience(b)
}

func bareAudience(a string) string {
	for _, scheme := range []string{"http://", "https://"} {
		if s, ok := strings.CutPrefix(a, scheme); ok {
			a = s
			break
		}
	}
	return strings.TrimSuffix(a, "/")
}

func (c *claims) auth() *authz.Auth {
	a := &authz.Auth{Audiences: c.aud, Presenter: c.azp, Claims: c.all}
	// Istio's request.auth.principal needs both: a token without sub has
	// no principal, and matches no requestPrincipals.
	if c.iss != "" && c.sub != "" {
		a.Principal = c.iss + "/" + c.sub
	}
	return a
}
