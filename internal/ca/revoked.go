package ca

import (
	"cmp"
	"maps"
	"slices"
	"sync"
	"time"
)

// Revocations is the CA's deny list: the pods deleted while certificates
// issued to them may still be valid. Every certificate names its pod
// (identity.PodOf); proxies refuse the certificates of the pods listed, so
// a certificate and key taken from a pod stop working when the pod is
// deleted, not when the certificate expires. An entry is kept until every
// certificate of its pod has expired. Safe for concurrent use.
type Revocations struct {
	// TTL is the longest lifetime of a certificate the CA issues: a pod's
	// entry is kept this long after it was deleted. Required.
	TTL time.Duration
	// Max bounds the list (default 50000). Beyond it the entries that
	// expire first are dropped, and counted: their certificates are then
	// refused only by expiry, at most TTL later.
	Max int

	mu      sync.Mutex
	running map[string]bool      // guarded by mu: the meshed pods' UIDs at the last Observe
	until   map[string]time.Time // guarded by mu: revoked UID -> when its certificates have expired
	dropped int                  // guarded by mu
}

// Observe takes the UIDs of the meshed pods running now: pods that ran at
// the previous call and do not any more are revoked. It returns the deny
// list (sorted) and whether it changed since the previous call.
func (r *Revocations) Observe(running []string, now time.Time) (list []string, changed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.until == nil {
		r.until = map[string]time.Time{}
	}
	next := make(map[string]bool, len(running))
	for _, uid := range running {
		if uid != "" {
			next[uid] = true
		}
	}
	for uid := range r.running {
		if !next[uid] {
			r.until[uid] = now.Add(r.TTL)
			changed = true
		}
	}
	r.running = next
	for uid, t := range r.until {
		if !now.Before(t) {
			delete(r.until, uid)
			changed = true
		}
	}
	if over := len(r.until) - cmp.Or(r.Max, 50000); over > 0 {
		uids := slices.SortedFunc(maps.Keys(r.until), func(a, b string) int { return r.until[a].Compare(r.until[b]) })
		for _, uid := range uids[:over] {
			delete(r.until, uid)
		}
		r.dropped += over
	}
	return slices.Sorted(maps.Keys(r.until)), changed
}

// Has reports whether the certificates of pod uid are refused.
func (r *Revocations) Has(uid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.until[uid]
	return ok && uid != ""
}

// Len is the length of the deny list.
func (r *Revocations) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.until)
}

// Dropped is how many entries Max has pushed out so far.
func (r *Revocations) Dropped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}
