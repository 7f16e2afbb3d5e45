package controlplane

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The keeper fetches a jwksUri named by a RequestAuthentication (from a
// real server on loopback) and republishes the latest snapshot with the
// keys; a snapshot without it publishes none.
func TestJWKSKeeperFetchesAndRepublishes(t *testing.T) {
	const set = `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}`
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Write([]byte(set))
	}))
	defer srv.Close()
	var mu sync.Mutex
	var published []*catalog.Snapshot
	k := newJWKSKeeper(func(s *catalog.Snapshot) {
		mu.Lock()
		published = append(published, s)
		mu.Unlock()
	}, true) // the issuer is on loopback
	go k.run(t.Context())
	ra := &catalog.RequestAuthentication{Meta: catalog.Meta{Namespace: "db", Name: "jwt"},
		Spec: catalog.RequestAuthenticationSpec{JWTRules: []catalog.JWTRule{{Issuer: "i", JWKSURI: srv.URL + "/keys"}}}}
	k.update(&catalog.Snapshot{Version: 1, RequestAuthentications: []*catalog.RequestAuthentication{ra}})
	last := func() *catalog.Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return published[len(published)-1]
	}
	deadline := time.Now().Add(5 * time.Second)
	for string(last().JWKS[srv.URL+"/keys"]) != set && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := last(); got.Version != 1 || string(got.JWKS[srv.URL+"/keys"]) != set {
		t.Fatalf("latest snapshot: version %d with keys %q, want version 1 with the fetched set", got.Version, got.JWKS)
	}
	// The next snapshot goes out with the keys at once, without a fetch.
	k.update(&catalog.Snapshot{Version: 2, RequestAuthentications: []*catalog.RequestAuthentication{ra}})
	if got := last(); got.Version != 2 || string(got.JWKS[srv.URL+"/keys"]) != set {
		t.Errorf("snapshot 2 went out with keys %q", got.JWKS)
	}
	// Without the policy, the keys go.
	k.update(&catalog.Snapshot{Version: 3})
	for len(last().JWKS) != 0 && time.Now().Before(deadline.Add(5*time.Second)) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := last(); got.Version != 3 || len(got.JWKS) != 0 {
		t.Errorf("without a RequestAuthentication: version %d with keys %q, want none", got.Version, got.JWKS)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("the set was fetched %d times, want once (cached for 20 min)", n)
	}
}

// Whoever writes RequestAuthentications in one namespace cannot crowd out
// another's issuers: each namespace has a quota, the root namespaces'
// come first.
func TestJWKSURIsPerNamespace(t *testing.T) {
	ra := func(ns string, n int) *catalog.RequestAuthentication {
		r := &catalog.RequestAuthentication{Meta: catalog.Meta{Namespace: ns, Name: "jwt"}}
		for i := range n {
			r.Spec.JWTRules = append(r.Spec.JWTRules, catalog.JWTRule{Issuer: "i", JWKSURI: fmt.Sprintf("https://%s.example/%d", ns, i)})
		}
		return r
	}
	uris, skipped := jwksURIs(&catalog.Snapshot{RequestAuthentications: []*catalog.RequestAuthentication{
		ra("tenant", 100), ra("web", 1), ra("istio-system", 1)}})
	if len(uris) != maxJWKSURIsPerNS+2 || skipped != 100-maxJWKSURIsPerNS || uris[0] != "https://istio-system.example/0" ||
		!slices.Contains(uris, "https://web.example/0") {
		t.Errorf("fetched %v (%d skipped); want the root namespace's first, web's, and %d of tenant's", uris, skipped, maxJWKSURIsPerNS)
	}
}
