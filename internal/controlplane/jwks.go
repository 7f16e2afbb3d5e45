package controlplane

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Bounds of the key sets fetched: whoever may write a
// RequestAuthentication names the URIs, so they must not make the control
// plane fetch without end, nor crowd out other namespaces' issuers. The
// root namespaces' URIs come first; each namespace has a quota; past
// either bound the rest are not fetched (their issuers' tokens are
// refused) and a warning says so. Fetches run a few at a time.
const (
	maxJWKSURIs         = 256
	maxJWKSURIsPerNS    = 8
	parallelJWKSFetches = 8
)

// jwksKeeper fetches the key sets behind the jwksUris of the mesh's
// RequestAuthentications, so proxies never fetch: each snapshot goes on
// with the sets known so far (snapshot.JWKS), and when a set arrives or
// changes, the latest snapshot goes again with it.
type jwksKeeper struct {
	fetcher authn.Fetcher
	publish func(*catalog.Snapshot) // called under mu; must not block
	wake    chan struct{}
	skipped int // URIs left out last round; the run loop's

	mu   sync.Mutex
	last *catalog.Snapshot // guarded by mu: as the source published it
	keys map[string][]byte // guarded by mu: by URI
	errs map[string]string // guarded by mu: the failure last reported per URI
}

// newJWKSKeeper fetches with a client that may reach loopback issuers
// only when loopback is set (one-host mode).
func newJWKSKeeper(publish func(*catalog.Snapshot), loopback bool) *jwksKeeper {
	return &jwksKeeper{fetcher: authn.Fetcher{Client: authn.SafeClient(loopback)}, publish: publish, wake: make(chan struct{}, 1), errs: map[string]string{}}
}

// update publishes the source's snapshot with the key sets known now.
// Publishing under mu keeps the order: a snapshot republished with new
// keys is never older than one already published.
func (k *jwksKeeper) update(s *catalog.Snapshot) {
	k.mu.Lock()
	k.last = s
	k.publish(withKeys(s, k.keys))
	k.mu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// run fetches the sets the latest snapshot needs whenever a snapshot
// comes and every 30 s (the fetcher refetches a set only when it is due:
// 20 min after a success, 1 min after a failure), until ctx ends.
func (k *jwksKeeper) run(ctx context.Context) error {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-k.wake:
		case <-tick.C:
		}
		k.mu.Lock()
		s := k.last
		k.mu.Unlock()
		uris, skipped := jwksURIs(s)
		if skipped > 0 && skipped != k.skipped {
			slog.Warn("RequestAuthentications name more jwksUris than are fetched (per namespace, or in all): the rest are not, and their issuers' tokens are refused",
				"notFetched", skipped, "perNamespace", maxJWKSURIsPerNS, "inAll", maxJWKSURIs)
		}
		k.skipped = skipped
		k.fetcher.Forget(func(uri string) bool { return slices.Contains(uris, uri) })
		fresh := map[string][]byte{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, parallelJWKSFetches)
		for _, uri := range uris {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				data, err := k.fetcher.Keys(ctx, uri, time.Now())
				k.report(uri, err)
				if data != nil {
					mu.Lock()
					fresh[uri] = data
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		k.mu.Lock()
		if !maps.EqualFunc(fresh, k.keys, bytes.Equal) {
			k.keys = fresh
			k.publish(withKeys(k.last, fresh))
		}
		k.mu.Unlock()
	}
}

// report logs a fetch's failure once, and its recovery.
func (k *jwksKeeper) report(uri string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case err != nil && k.errs[uri] != err.Error():
		k.errs[uri] = err.Error()
		slog.Warn("JWKS fetch failed: tokens of its issuer are checked against the last keys fetched, or refused without any", "uri", uri, "err", err)
	case err == nil && k.errs[uri] != "":
		delete(k.errs, uri)
		slog.Info("JWKS fetched again", "uri", uri)
	}
}

// jwksURIs are the distinct jwksUris of s's RequestAuthentications to
// fetch: the root namespaces' first, at most maxJWKSURIsPerNS of each
// namespace and maxJWKSURIs in all.
func jwksURIs(s *catalog.Snapshot) (uris []string, skipped int) {
	if s == nil {
		return nil, 0
	}
	ras := slices.Clone(s.RequestAuthentications)
	root := func(ra *catalog.RequestAuthentication) bool {
		return slices.Contains(catalog.RootNamespaces, ra.Namespace)
	}
	slices.SortStableFunc(ras, func(a, b *catalog.RequestAuthentication) int {
		switch ra, rb := root(a), root(b); {
		case ra && !rb:
			return -1
		case rb && !ra:
			return 1
		}
		return 0
	})
	perNS := map[string]int{}
	for _, ra := range ras {
		for _, r := range ra.Spec.JWTRules {
			if r.JWKSURI == "" || slices.Contains(uris, r.JWKSURI) {
				continue
			}
			if perNS[ra.Namespace] >= maxJWKSURIsPerNS || len(uris) >= maxJWKSURIs {
				skipped++
				continue
			}
			perNS[ra.Namespace]++
			uris = append(uris, r.JWKSURI)
		}
	}
	return uris, skipped
}

// withKeys is s with keys as its JWKS; s itself is never changed.
func withKeys(s *catalog.Snapshot, keys map[string][]byte) *catalog.Snapshot {
	if len(keys) == 0 && len(s.JWKS) == 0 {
		return s
	}
	out := *s
	out.JWKS = keys
	return &out
}
