package authn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Fetcher fetches the key sets behind jwksUri rules, for the control
// plane to push to the proxies. It keeps each set for Refresh and, when a
// fetch fails, keeps the last good one. It starts no goroutine: a fetch
// runs inside Keys, on the caller's goroutine, when the cached set is due.
// The zero Fetcher is ready; it is safe for concurrent use.
type Fetcher struct {
	// Client sends the requests; nil means SafeClient(false). A redirect
	// it follows must stay on https (or loopback http).
	Client *http.Client
	// Timeout bounds one fetch; zero means 5 s.
	Timeout time.Duration
	// Refresh is how long a fetched set is used before it is fetched
	// again; zero means 20 min, Istio's default.
	Refresh time.Duration
	// Retry is how long after a failed fetch the next one is tried; zero
	// means 1 min.
	Retry time.Duration
	// MaxSize caps a response body; zero, or more than MaxJWKSSize,
	// means MaxJWKSSize (1 MiB).
	MaxSize int64

	mu sync.Mutex
	// sets holds the cache by URI; guarded by mu.
	sets map[string]*cachedSet
}

type cachedSet struct {
	data []byte    // the last good set; nil before the first
	err  error     // the last fetch's failure; nil after a success
	next time.Time // when the next fetch is due
}

// Keys returns the key set at uri, as of now, fetching it when the cached
// one is due. It may block for up to Timeout. When the latest fetch
// failed, it returns the last good set, if any, together with the error:
// the caller pushes what it has and reports the error. With no set at
// all, the caller pushes none, and Compile then fails the issuer's tokens
// closed.
func (f *Fetcher) Keys(ctx context.Context, uri string, now time.Time) ([]byte, error) {
	f.mu.Lock()
	c := f.sets[uri]
	if c != nil && now.Before(c.next) {
		data, err := c.data, c.err
		f.mu.Unlock()
		return data, err
	}
	f.mu.Unlock()

	// Concurrent callers may fetch the same URI at once; that costs a
	// request, not correctness.
	data, err := f.fetch(ctx, uri)

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sets == nil {
		f.sets = make(map[string]*cachedSet)
	}
	c = f.sets[uri]
	if c == nil {
		c = &cachedSet{}
		f.sets[uri] = c
	}
	if err != nil {
		c.err, c.next = err, now.Add(orDefault(f.Retry, time.Minute))
		return c.data, err
	}
	c.data, c.err, c.next = data, nil, now.Add(orDefault(f.Refresh, 20*time.Minute))
	return data, nil
}

// Forget drops the cached sets of the URIs keep refuses, so the cache
// follows the policies in force rather than every URI ever seen.
func (f *Fetcher) Forget(keep func(uri string) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for uri := range f.sets {
		if !keep(uri) {
			delete(f.sets, uri)
		}
	}
}

func (f *Fetcher) fetch(ctx context.Context, uri string) ([]byte, error) {
	if err := checkURI(uri); err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, orDefault(f.Timeout, 5*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks %s: %w", uri, err)
	}
	req.Header.Set("Accept", "application/json")
	client := f.Client
	if client == nil {
		client = SafeClient(false)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	if err := checkURI(resp.Request.URL.String()); err != nil {
		return nil, fmt.Errorf("fetch jwks %s: redirected: %w", uri, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch jwks %s: status %s, want 200 OK", uri, resp.Status)
	}
	limit := f.MaxSize
	if limit <= 0 || limit > MaxJWKSSize {
		limit = MaxJWKSSize
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("fetch jwks %s: %w", uri, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("fetch jwks %s: response is over the %d-byte limit", uri, limit)
	}
	if _, err := parseJWKS(data); err != nil {
		return nil, fmt.Errorf("fetch jwks %s: %w", uri, err)
	}
	return data, nil
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// SafeClient is the client a Fetcher uses by default: whoever writes a
// RequestAuthentication names the URL, and the control plane fetches it,
// so it must not reach what the writer could not. Every redirect is
// checked as the URL was (https, or http to loopback), at most three are
// followed, and connections to link-local addresses (cloud metadata
// services) are refused, as are, unless loopback is set (one-host mode,
// where issuers may run on the host), loopback ones.
func SafeClient(loopback bool) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return err
		}
		a := ap.Addr().Unmap()
		switch {
		case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsUnspecified():
			return fmt.Errorf("jwksUri: %s is a link-local or unspecified address: refused", a)
		case a.IsLoopback() && !loopback:
			return fmt.Errorf("jwksUri: %s is a loopback address, the control plane's own: refused", a)
		}
		return nil
	}}
	return &http.Client{
		Transport: &http.Transport{DialContext: dialer.DialContext, TLSHandshakeTimeout: 5 * time.Second, ResponseHeaderTimeout: 5 * time.Second},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("more than 3 redirects")
			}
			return checkURI(req.URL.String())
		},
	}
}
