package proxy

// RequestAuthentication enforced by the destination sidecar over real
// sockets and real mutual TLS, with real signatures: a request without a
// token passes unauthenticated, a bad token is answered 401 (gRPC
// UNAUTHENTICATED), a good one reaches the app without the token and
// gives AuthorizationPolicy its principal and claims.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

const issuer = "https://issuer.test"

// issuerKey is a signing key and its public JWKS.
type issuerKey struct {
	priv *ecdsa.PrivateKey
	jwks string
}

func newIssuerKey(t *testing.T) issuerKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: priv.Public(), KeyID: "k1", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return issuerKey{priv, string(b)}
}

// token signs claims (iss, sub, aud and a minute of validity unless
// given) with k.
func (k issuerKey) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	c := map[string]any{"iss": issuer, "sub": "alice", "aud": "graph", "exp": time.Now().Add(time.Minute).Unix()}
	for name, v := range claims {
		if v == nil {
			delete(c, name)
		} else {
			c[name] = v
		}
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(c)
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRequestAuthenticationOnHTTP(t *testing.T) {
	// The app says which credentials reached it.
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "authorization=%q payload=%t", r.Header.Get("Authorization"), r.Header.Get("X-Jwt-Payload") != "")
		})
	})
	k := newIssuerKey(t)
	m.inbounds[0].SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha", Identity: m.serverID.String()},
		Authentication: authn.ToProto([]authn.JWTRule{{Issuer: issuer, Audiences: []string{"graph"}, JWKS: k.jwks,
			OutputPayloadToHeader: "X-Jwt-Payload"}}, nil),
		Authorization: authz.ToProto([]authz.Policy{
			policy(t, "token-for-private", `{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ["*"]}}], to: [{operation: {paths: ["/private*"]}}]}]}`),
			policy(t, "admins-only", `{action: DENY, rules: [{to: [{operation: {paths: ["/admin"]}}], when: [{key: "request.auth.claims[groups]", notValues: [admins]}]}]}`),
		})})
	get := func(path, tok string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+m.appAddr+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	good := k.token(t, nil)
	other := newIssuerKey(t)
	tampered := good[:strings.LastIndexByte(good, '.')] + "." + strings.Repeat("A", 86)
	for _, tc := range []struct {
		name, path, token string
		code              int
		body              string
	}{
		{"no token, public path", "/public", "", 200, `authorization="" payload=false`},
		{"no token, private path", "/private", "", 403, deniedText},
		{"a good token: verified, then taken out", "/private", good, 200, `authorization="" payload=true`},
		{"expired", "/public", k.token(t, map[string]any{"exp": time.Now().Add(-2 * time.Minute).Unix()}), 401, "expired"},
		{"not yet valid", "/public", k.token(t, map[string]any{"nbf": time.Now().Add(5 * time.Minute).Unix()}), 401, "not yet valid"},
		{"another issuer", "/public", k.token(t, map[string]any{"iss": "https://evil.test"}), 401, "issuer"},
		{"another audience", "/public", k.token(t, map[string]any{"aud": "billing"}), 401, "audience"},
		{"signed by another key", "/public", other.token(t, nil), 401, "verification fails"},
		{"tampered signature", "/public", tampered, 401, "verification fails"},
		{"not a JWT", "/public", "garbage", 401, "jwt"},
		{"a claim the DENY requires is missing", "/admin", good, 403, deniedText},
		{"the claim present", "/admin", k.token(t, map[string]any{"groups": []string{"admins"}}), 200, `authorization=""`},
	} {
		code, body := get(tc.path, tc.token)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s: GET %s = %d %q, want %d with %q", tc.name, tc.path, code, body, tc.code, tc.body)
		}
		if strings.Contains(body, "eyJ") {
			t.Errorf("%s: the answer echoes the token: %q", tc.name, body)
		}
	}
}

func TestRequestAuthenticationOnGRPC(t *testing.T) {
	m, services := newGRPCMesh(t)
	in := m.inbounds[0]
	k := newIssuerKey(t)
	in.SetConfig(&meshpb.ProxyConfig{Workload: &meshpb.Workload{Namespace: "db", Name: "alpha", Identity: m.serverID.String()},
		Services: services, Authentication: authn.ToProto([]authn.JWTRule{{Issuer: issuer, JWKS: k.jwks}}, nil),
		Authorization: authz.ToProto([]authz.Policy{policy(t, "need-token", `rules: [{from: [{source: {requestPrincipals: ["`+issuer+`/alice"]}}]}]`)})})
	conn, err := grpc.NewClient(m.appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	call := func(tok string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(k.token(t, nil)); err != nil {
		t.Errorf("a good token: %v", err)
	}
	if s := status.Convert(call("")); s.Code() != codes.PermissionDenied {
		t.Errorf("no token where a request principal is required: %v, want PERMISSION_DENIED", s.Err())
	}
	if s := status.Convert(call(newIssuerKey(t).token(t, nil))); s.Code() != codes.Unauthenticated {
		t.Errorf("a token signed by another key: %v, want UNAUTHENTICATED", s.Err())
	}
}
