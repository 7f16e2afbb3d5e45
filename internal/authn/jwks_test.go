package authn

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// jwksServer serves whatever status and body it is set to, counting
// requests.
type jwksServer struct {
	*httptest.Server

	mu     sync.Mutex
	status int
	body   string
	hits   int
}

func newJWKSServer(t *testing.T) *jwksServer {
	s := &jwksServer{status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.hits++
		w.WriteHeader(s.status)
		io.WriteString(w, s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *jwksServer) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits
}

func TestFetcher(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	k := keys()
	v1, v2 := jwksOf(k.rsa), jwksOf(k.ec256)
	srv := newJWKSServer(t)
	uri := srv.URL + "/jwks"
	f := &Fetcher{Client: srv.Client(), MaxSize: 64 << 10}

	// The steps run in order against one Fetcher; at is minutes from now.
	for _, step := range []struct {
		name     string
		status   int
		body     string
		at       time.Duration
		want     string
		wantErr  string // a part of the error; empty: none
		wantHits int
	}{
		{"first fetch", 200, v1, 0, v1, "", 1},
		{"cached before refresh", 200, v2, 10 * time.Minute, v1, "", 1},
		{"refreshed after 20 min", 200, v2, 21 * time.Minute, v2, "", 2},
		{"server error keeps last good", 500, "", 42 * time.Minute, v2, "status 500", 3},
		{"no retry within a minute", 200, v1, 42*time.Minute + 30*time.Second, v2, "status 500", 3},
		{"oversize refused", 200, `{"keys":[],"pad":"` + strings.Repeat("x", 64<<10) + `"}`, 44 * time.Minute, v2, "limit", 4},
		{"symmetric key refused", 200, `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, 46 * time.Minute, v2, "algorithm confusion", 5},
		{"not JSON refused", 200, "<html>", 48 * time.Minute, v2, "not a JSON Web Key Set", 6},
		{"recovered", 200, v1, 50 * time.Minute, v1, "", 7},
	} {
		srv.serve(step.status, step.body)
		got, err := f.Keys(ctx, uri, now.Add(step.at))
		if string(got) != step.want {
			t.Errorf("%s: Keys = %.40q, want %.40q", step.name, got, step.want)
		}
		if step.wantErr == "" && err != nil || step.wantErr != "" && (err == nil || !strings.Contains(err.Error(), step.wantErr)) {
			t.Errorf("%s: Keys error = %v, want %q", step.name, err, step.wantErr)
		}
		if n := srv.requests(); n != step.wantHits {
			t.Errorf("%s: server saw %d requests, want %d", step.name, n, step.wantHits)
		}
	}
}

func TestFetcherRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv := newJWKSServer(t)
	srv.serve(http.StatusNotFound, "not here")
	// A redirect to plain http off the host is followed by the client,
	// which this transport answers without a network.
	redirect := httptest.NewServer(http.RedirectHandler("http://idp.example/jwks", http.StatusFound))
	defer redirect.Close()
	offHost := &http.Client{Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host == "idp.example" {
			return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(jwksOf(keys().ed))), Request: r}, nil
		}
		return http.DefaultTransport.RoundTrip(r)
	})}

	for _, tc := range []struct {
		name    string
		f       *Fetcher
		uri     string
		wantErr string
	}{
		{"non-200 without a last good set", &Fetcher{Client: srv.Client()}, srv.URL, "status 404"},
		{"plain http off loopback", &Fetcher{}, "http://idp.example/jwks", "loopback"},
		{"redirect to plain http off loopback", &Fetcher{Client: offHost}, redirect.URL, "redirected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.f.Keys(ctx, tc.uri, now)
			if got != nil || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Keys = %q, %v, want nil, %q", got, err, tc.wantErr)
			}
		})
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The default client reaches neither the control plane's own loopback
// (unless allowed, as in one-host mode) nor, through a redirect, what a
// URL could not name.
func TestSafeClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bounce" {
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data", http.StatusFound)
			return
		}
		w.Write([]byte(`{"keys":[]}`))
	}))
	defer srv.Close()
	if _, err := SafeClient(false).Get(srv.URL); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("a loopback issuer without leave: %v, want refused", err)
	}
	if resp, err := SafeClient(true).Get(srv.URL); err != nil {
		t.Errorf("a loopback issuer in one-host mode: %v", err)
	} else {
		resp.Body.Close()
	}
	if _, err := SafeClient(true).Get(srv.URL + "/bounce"); err == nil || !strings.Contains(err.Error(), "169.254.169.254") {
		t.Errorf("a redirect to the metadata service: %v, want refused", err)
	}
}
