package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/trellis-mesh/trellis/internal/authz"
)

const issuer = "https://issuer.example"

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testKey is a signing key of the test issuer.
type testKey struct {
	kid  string
	priv crypto.Signer
}

type testKeys struct {
	rsa, ec256, ec384, ec521, ed testKey
	// jwks holds the public halves of all of them.
	jwks string
}

var keys = sync.OnceValue(func() testKeys {
	must := func(k crypto.Signer, err error) crypto.Signer {
		if err != nil {
			panic(err)
		}
		return k
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k := testKeys{
		rsa:   testKey{"rsa", must(rsa.GenerateKey(rand.Reader, 2048))},
		ec256: testKey{"ec256", must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))},
		ec384: testKey{"ec384", must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))},
		ec521: testKey{"ec521", must(ecdsa.GenerateKey(elliptic.P521(), rand.Reader))},
		ed:    testKey{"ed", ed},
	}
	k.jwks = jwksOf(k.rsa, k.ec256, k.ec384, k.ec521, k.ed)
	return k
})

func jwksOf(ks ...testKey) string {
	var set jose.JSONWebKeySet
	for _, k := range ks {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// sign makes a compact JWS of claims with k, its kid in the header.
func sign(t testing.TB, alg jose.SignatureAlgorithm, k testKey, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.kid != "" {
		opts = opts.WithHeader("kid", k.kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: k.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// testClaims are a valid token's, with changes; a nil value deletes.
func testClaims(changes map[string]any) map[string]any {
	c := map[string]any{
		"iss": issuer, "sub": "alice", "aud": []string{"api", "other"}, "azp": "web",
		"exp": now.Add(time.Hour).Unix(), "nbf": now.Add(-time.Minute).Unix(),
		"groups": []string{"dev", "ops"}, "n": 42,
	}
	for k, v := range changes {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func compile(t testing.TB, rules ...JWTRule) *Authenticator {
	t.Helper()
	a, err := Compile(rules, nil)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return a
}

func defaultRule() JWTRule {
	return JWTRule{Issuer: issuer, Audiences: []string{"api"}, JWKS: keys().jwks}
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest("GET", "/p", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func TestAuthenticateAlgorithms(t *testing.T) {
	k := keys()
	a := compile(t, defaultRule())
	for _, tc := range []struct {
		alg jose.SignatureAlgorithm
		key testKey
	}{
		{jose.RS256, k.rsa}, {jose.RS384, k.rsa}, {jose.RS512, k.rsa},
		{jose.PS256, k.rsa}, {jose.PS384, k.rsa}, {jose.PS512, k.rsa},
		{jose.ES256, k.ec256}, {jose.ES384, k.ec384}, {jose.ES512, k.ec521},
		{jose.EdDSA, k.ed},
	} {
		t.Run(string(tc.alg), func(t *testing.T) {
			c := testClaims(nil)
			res, err := a.Authenticate(bearer(sign(t, tc.alg, tc.key, c)), now)
			if err != nil {
				t.Fatalf("Authenticate = %v, want nil", err)
			}
			var wantClaims map[string]any
			b, _ := json.Marshal(c)
			_ = json.Unmarshal(b, &wantClaims)
			want := &authz.Auth{Principal: issuer + "/alice", Audiences: []string{"api", "other"}, Presenter: "web", Claims: wantClaims}
			if !reflect.DeepEqual(res.Auth, want) {
				t.Errorf("Authenticate().Auth = %+v, want %+v", res.Auth, want)
			}
		})
	}
}

func TestAuthenticateRefusals(t *testing.T) {
	k := keys()
	rs := func(c map[string]any) string { return sign(t, jose.RS256, k.rsa, c) }
	valid := rs(testClaims(nil))
	parts := strings.Split(valid, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[0] ^= 1
	deep := strings.Repeat("[", 40) + strings.Repeat("]", 40)
	rsaPEM, _ := x509.MarshalPKIXPublicKey(k.rsa.priv.Public())
	mac := hmac.New(sha256.New, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPEM}))
	hsInput := b64(`{"alg":"HS256","kid":"rsa","typ":"JWT"}`) + "." + parts[1]
	mac.Write([]byte(hsInput))
	a := compile(t, defaultRule())

	for _, tc := range []struct {
		name  string
		token string
		want  error // nil: accepted
	}{
		{"valid", valid, nil},
		{"expired", rs(testClaims(map[string]any{"exp": now.Add(-2 * time.Minute).Unix()})), ErrExpired},
		{"expired within skew", rs(testClaims(map[string]any{"exp": now.Add(-30 * time.Second).Unix()})), nil},
		{"not yet valid", rs(testClaims(map[string]any{"nbf": now.Add(2 * time.Minute).Unix()})), ErrNotYetValid},
		{"not yet valid within skew", rs(testClaims(map[string]any{"nbf": now.Add(30 * time.Second).Unix()})), nil},
		{"no exp", rs(testClaims(map[string]any{"exp": nil})), nil},
		{"other issuer", rs(testClaims(map[string]any{"iss": "https://other.example"})), ErrIssuer},
		{"no issuer", rs(testClaims(map[string]any{"iss": nil})), ErrIssuer},
		{"other audience", rs(testClaims(map[string]any{"aud": "web"})), ErrAudience},
		{"no audience", rs(testClaims(map[string]any{"aud": nil})), ErrAudience},
		{"audience without scheme and slash", rs(testClaims(map[string]any{"aud": "https://api/"})), nil},
		{"audience of wrong type", rs(testClaims(map[string]any{"aud": 7})), ErrMalformed},
		{"unknown kid", sign(t, jose.RS256, testKey{"nope", k.rsa.priv}, testClaims(nil)), ErrNoKey},
		{"kid of a key of another type", sign(t, jose.ES256, testKey{"rsa", k.ec256.priv}, testClaims(nil)), ErrNoKey},
		{"no kid", sign(t, jose.ES256, testKey{"", k.ec256.priv}, testClaims(nil)), nil},
		{"key not in the set", sign(t, jose.RS256, testKey{"", mustRSA(t)}, testClaims(nil)), ErrSignature},
		{"tampered payload", parts[0] + "." + b64(`{"iss":"`+issuer+`","sub":"root","aud":"api"}`) + "." + parts[2], ErrSignature},
		{"tampered signature", parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig), ErrSignature},
		{"alg none", b64(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + ".", ErrAlgorithm},
		{"HS256 keyed with the RSA public key", hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), ErrAlgorithm},
		{"oversize", rs(testClaims(map[string]any{"pad": strings.Repeat("x", MaxTokenSize)})), ErrTooLarge},
		{"too deep", rs(testClaims(map[string]any{"deep": json.RawMessage(deep)})), ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed},
		{"not base64", "a!.b!.c!", ErrMalformed},
		{"payload not an object", parts[0] + "." + b64(`[1]`) + "." + parts[2], ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(bearer(tc.token), now)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("Authenticate = %v, want %v", err, tc.want)
			}
			if err != nil && (strings.Contains(err.Error(), tc.token) || len(err.Error()) > 200) {
				t.Errorf("Authenticate error %q echoes the token or is long", err)
			}
		})
	}
}

func mustRSA(t testing.TB) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuthenticateLocations(t *testing.T) {
	k := keys()
	tok := sign(t, jose.ES256, k.ec256, testClaims(nil))
	custom := compile(t, JWTRule{
		Issuer: issuer, JWKS: k.jwks,
		FromHeaders: []JWTHeader{{Name: "x-jwt-assertion", Prefix: "Token "}},
		FromParams:  []string{"jwt"},
		FromCookies: []string{"session"},
	})
	defaults := compile(t, defaultRule())
	other := sign(t, jose.ES256, k.ec256, testClaims(map[string]any{"iss": "https://other.example", "sub": "bob"}))
	two := compile(t, defaultRule(), JWTRule{Issuer: "https://other.example", JWKS: k.jwks})

	req := func(target string, hdr ...string) *http.Request {
		r := httptest.NewRequest("GET", target, nil)
		for i := 0; i < len(hdr); i += 2 {
			r.Header.Add(hdr[i], hdr[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name string
		a    *Authenticator
		r    *http.Request
		want string // Principal; empty: unauthenticated
	}{
		{"custom header with prefix", custom, req("/", "X-Jwt-Assertion", "Token "+tok), issuer + "/alice"},
		{"custom header without prefix", custom, req("/", "X-Jwt-Assertion", tok), ""},
		{"custom query parameter", custom, req("/?a=1&jwt=" + tok), issuer + "/alice"},
		{"custom cookie", custom, req("/", "Cookie", "theme=dark; session="+tok), issuer + "/alice"},
		{"defaults unused by a custom rule", custom, req("/?access_token="+tok, "Authorization", "Bearer "+tok), ""},
		{"default header", defaults, req("/", "Authorization", "Bearer "+tok), issuer + "/alice"},
		{"default header, scheme in lower case", defaults, req("/", "Authorization", "bearer "+tok), issuer + "/alice"},
		{"default query parameter", defaults, req("/?access_token=" + tok), issuer + "/alice"},
		{"no token", defaults, req("/"), ""},
		{"basic credentials", defaults, req("/", "Authorization", "Basic YWxpY2U6cHc="), ""},
		{"empty bearer", defaults, req("/", "Authorization", "Bearer "), ""},
		{"rule chosen by issuer", two, req("/", "Authorization", "Bearer "+other), "https://other.example/bob"},
		{"nil authenticator", nil, req("/", "Authorization", "Bearer "+tok), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := tc.a.Authenticate(tc.r, now)
			if err != nil {
				t.Fatalf("Authenticate = %v, want nil", err)
			}
			got := ""
			if res.Auth != nil {
				got = res.Auth.Principal
			}
			if got != tc.want {
				t.Errorf("Authenticate().Auth.Principal = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAuthenticateTooManyTokens(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	for range maxTokens + 1 {
		r.Header.Add("Authorization", "Bearer x.y.z")
	}
	if _, err := compile(t, defaultRule()).Authenticate(r, now); !errors.Is(err, ErrTooManyTokens) {
		t.Errorf("Authenticate = %v, want %v", err, ErrTooManyTokens)
	}
}

func TestApply(t *testing.T) {
	k := keys()
	c := testClaims(map[string]any{
		"admin": true, "org": map[string]any{"id": "o-1"}, "evil": "a\r\nX-Injected: 1",
		"https://example.com/role": "owner",
	})
	tok := sign(t, jose.EdDSA, k.ed, c)
	outputs := JWTRule{
		Issuer: issuer, JWKS: k.jwks,
		OutputPayloadToHeader: "x-jwt-payload",
		OutputClaimToHeaders: []ClaimToHeader{
			{Header: "x-sub", Claim: "sub"}, {Header: "x-n", Claim: "n"}, {Header: "x-admin", Claim: "admin"},
			{Header: "x-org", Claim: "org.id"}, {Header: "x-role", Claim: "https://example.com/role"},
			{Header: "x-groups", Claim: "groups"}, {Header: "x-evil", Claim: "evil"}, {Header: "x-missing", Claim: "missing"},
		},
	}
	forward := defaultRule()
	forward.ForwardOriginalToken = true
	cookie := JWTRule{Issuer: issuer, JWKS: k.jwks, FromCookies: []string{"session"}}

	for _, tc := range []struct {
		name       string
		rule       JWTRule
		target     string
		hdr        http.Header
		wantQuery  string
		wantHeader http.Header // the headers that must be absent are given empty
	}{
		{
			name: "token header removed", rule: defaultRule(), target: "/",
			hdr:        http.Header{"Authorization": {"Bearer " + tok}},
			wantHeader: http.Header{"Authorization": nil},
		},
		{
			name: "token header forwarded", rule: forward, target: "/",
			hdr:        http.Header{"Authorization": {"Bearer " + tok}},
			wantHeader: http.Header{"Authorization": {"Bearer " + tok}},
		},
		{
			name: "token query parameter removed", rule: defaultRule(), target: "/?a=1&access_token=" + tok + "&b=2",
			wantQuery: "a=1&b=2",
		},
		{
			name: "token cookie removed", rule: cookie, target: "/",
			hdr:        http.Header{"Cookie": {"theme=dark; session=" + tok + "; lang=en"}},
			wantHeader: http.Header{"Cookie": {"theme=dark; lang=en"}},
		},
		{
			name: "payload and claims output, forged ones replaced", rule: outputs, target: "/",
			hdr: http.Header{"Authorization": {"Bearer " + tok}, "X-Sub": {"mallory"}, "X-Missing": {"forged"}},
			wantHeader: http.Header{
				"X-Jwt-Payload": {strings.Split(tok, ".")[1]},
				"X-Sub":         {"alice"}, "X-N": {"42"}, "X-Admin": {"true"}, "X-Org": {"o-1"}, "X-Role": {"owner"},
				"X-Groups": nil, "X-Evil": nil, "X-Missing": nil,
			},
		},
		{
			name: "forged outputs stripped without a token", rule: outputs, target: "/",
			hdr:        http.Header{"X-Jwt-Payload": {b64(`{"sub":"root"}`)}, "X-Sub": {"root"}},
			wantHeader: http.Header{"X-Jwt-Payload": nil, "X-Sub": nil},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.target, nil)
			for name, vs := range tc.hdr {
				r.Header[name] = vs
			}
			res, err := compile(t, tc.rule).Authenticate(r, now)
			if err != nil {
				t.Fatalf("Authenticate = %v, want nil", err)
			}
			res.Apply(r)
			if r.URL.RawQuery != tc.wantQuery {
				t.Errorf("after Apply, query = %q, want %q", r.URL.RawQuery, tc.wantQuery)
			}
			for name, want := range tc.wantHeader {
				if got := r.Header.Values(name); !reflect.DeepEqual(got, want) {
					t.Errorf("after Apply, header %s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func TestCompileKeysFromFetcher(t *testing.T) {
	k := keys()
	const uri = "https://issuer.example/jwks"
	rule := JWTRule{Issuer: issuer, JWKSURI: uri}
	tok := sign(t, jose.RS256, k.rsa, testClaims(nil))
	for _, tc := range []struct {
		name string
		keys func(string) []byte
		want error
	}{
		{"keys pushed", func(u string) []byte {
			if u != uri {
				t.Errorf("keys(%q), want keys(%q)", u, uri)
			}
			return []byte(k.jwks)
		}, nil},
		{"no keys yet fails closed", func(string) []byte { return nil }, ErrNoKey},
		{"no keys function fails closed", nil, ErrNoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Compile([]JWTRule{rule}, tc.keys)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			if _, err := a.Authenticate(bearer(tok), now); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("Authenticate = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := Compile([]JWTRule{rule}, func(string) []byte { return []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`) }); err == nil {
		t.Error("Compile with a symmetric key set pushed = nil, want an error")
	}
}

func TestCheck(t *testing.T) {
	k := keys()
	rule := func(change func(r *JWTRule)) Spec {
		r := JWTRule{Issuer: issuer, JWKS: k.jwks}
		change(&r)
		return Spec{JWTRules: []JWTRule{r}}
	}
	for _, tc := range []struct {
		name string
		spec Spec
		want string // a part of the error; empty: valid
	}{
		{"inline keys", rule(func(*JWTRule) {}), ""},
		{"https uri", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "https://idp.example/jwks" }), ""},
		{"http to 127.0.0.2", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "http://127.0.0.2:8080/jwks" }), ""},
		{"http to ::1", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "http://[::1]/jwks" }), ""},
		{"http to localhost", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "http://localhost/jwks" }), ""},
		{"no issuer", rule(func(r *JWTRule) { r.Issuer = "" }), "jwtRules[0].issuer: empty"},
		{"both key sources", rule(func(r *JWTRule) { r.JWKSURI = "https://idp.example/jwks" }), "jwks and jwksUri: give one"},
		{"no key source", rule(func(r *JWTRule) { r.JWKS = "" }), "give jwksUri"},
		{"http elsewhere", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "http://idp.example/jwks" }), "loopback"},
		{"relative uri", rule(func(r *JWTRule) { r.JWKS, r.JWKSURI = "", "/jwks" }), "not an absolute URL"},
		{"jwks not JSON", rule(func(r *JWTRule) { r.JWKS = "{" }), "jwks: not a JSON Web Key Set"},
		{"jwks without keys", rule(func(r *JWTRule) { r.JWKS = `{"kid":"x"}` }), `no "keys"`},
		{"jwks with an oct key", rule(func(r *JWTRule) { r.JWKS = `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}` }), "algorithm confusion"},
		{"jwks with a private key", rule(func(r *JWTRule) { r.JWKS = jwksPrivate(t, k.ec256) }), "private key material"},
		{"jwks with only unknown keys", rule(func(r *JWTRule) { r.JWKS = `{"keys":[{"kty":"XYZ"}]}` }), "no usable key"},
		{"jwks with a bad RSA key", rule(func(r *JWTRule) { r.JWKS = `{"keys":[{"kty":"RSA","n":"AQAB"}]}` }), "keys[0]"},
		{"bad header name", rule(func(r *JWTRule) { r.FromHeaders = []JWTHeader{{Name: "x jwt"}} }), "fromHeaders[0].name"},
		{"bad cookie name", rule(func(r *JWTRule) { r.FromCookies = []string{"a;b"} }), "fromCookies[0]"},
		{"empty param", rule(func(r *JWTRule) { r.FromParams = []string{""} }), "fromParams[0]"},
		{"bad payload header", rule(func(r *JWTRule) { r.OutputPayloadToHeader = "x:y" }), "outputPayloadToHeader"},
		{"bad claim header", rule(func(r *JWTRule) { r.OutputClaimToHeaders = []ClaimToHeader{{Header: "a\nb", Claim: "sub"}} }), "outputClaimToHeaders[0].header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.spec)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}

func jwksPrivate(t testing.TB, k testKey) string {
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.priv, KeyID: k.kid}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func FuzzAuthenticate(f *testing.F) {
	k := keys()
	valid := sign(f, jose.ES256, k.ec256, testClaims(nil))
	parts := strings.Split(valid, ".")
	for _, s := range []string{
		valid, "", ".", "..", "a.b.c", parts[0] + "." + parts[1] + ".",
		b64(`{"alg":"none"}`) + "." + parts[1] + ".",
		b64(`{"alg":"ES256","crit":["b64"],"b64":false}`) + "." + parts[1] + "." + parts[2],
		parts[0] + "." + b64(`{"iss":"`+issuer+`","aud":[1],"exp":"x"}`) + "." + parts[2],
	} {
		f.Add(s)
	}
	a := compile(f, defaultRule(), JWTRule{
		Issuer: issuer, JWKS: k.jwks, FromCookies: []string{"s"}, FromParams: []string{"t"},
		OutputPayloadToHeader: "x-p", OutputClaimToHeaders: []ClaimToHeader{{Header: "x-c", Claim: "a.b"}},
	})
	f.Fuzz(func(t *testing.T, tok string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		r.Header.Set("Cookie", "s="+tok)
		r.URL.RawQuery = "t=" + tok
		res, err := a.Authenticate(r, now)
		if err != nil {
			if len(err.Error()) > 200 {
				t.Fatalf("Authenticate error is %d bytes long", len(err.Error()))
			}
			return
		}
		res.Apply(r)
	})
}
