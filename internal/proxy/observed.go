package proxy

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Bounds of what a destination sidecar remembers of the access it let
// in. Callers choose methods and paths, so both the whole and each caller's
// share are bounded: past maxPathsPerCaller distinct paths for one caller,
// port and method, its further paths are remembered as one "*", and past
// maxObserved entries nothing new is remembered (and the overflow is
// counted).
const (
	maxObserved       = 4096
	maxPathsPerCaller = 64
	maxObservedPath   = 256
)

// ObservedAccess is one kind of request (or TCP connection) the sidecar
// let in: who sent it (its SPIFFE ID without "spiffe://"; empty for a
// plaintext caller), to which app port, with which method and path (empty
// for TCP; path "*" for more distinct paths than are kept), how often and
// when it was last seen. `trellis authz suggest` writes policies from
// them and `trellis authz check` replays them.
type ObservedAccess struct {
	Principal string    `json:"principal"`
	Namespace string    `json:"namespace,omitempty"`
	Port      uint16    `json:"port"`
	Method    string    `json:"method,omitempty"`
	Path      string    `json:"path,omitempty"`
	Count     int64     `json:"count"`
	Last      time.Time `json:"last"`
}

type accessKey struct {
	principal, namespace string
	port                 uint16
	method, path         string
}

type accessEntry struct {
	count, last atomic.Int64 // last: Unix seconds
}

// observedAccess remembers access, cheaply on the request path: a known
// kind costs a map read and two atomic writes.
type observedAccess struct {
	entries  sync.Map // accessKey -> *accessEntry
	size     atomic.Int64
	overflow atomic.Int64

	mu    sync.Mutex
	paths map[accessKey]int // guarded by mu: distinct paths per key without path
}

// record notes one request (method and path empty for TCP). Requests
// with a method that is not HTTP's own, or the asterisk target, are not
// noted: callers would choose them to fill the table.
func (o *observedAccess) record(principal, namespace string, port uint16, method, path string, now time.Time) {
	if method != "" && (!slices.Contains(httpMethods, method) || path == "*") {
		return
	}
	k := accessKey{principal, namespace, port, method, clip(path, maxObservedPath)}
	e, ok := o.entries.Load(k)
	if !ok {
		if k, ok = o.admit(k); !ok {
			o.overflow.Add(1)
			return
		}
		e, _ = o.entries.LoadOrStore(k, &accessEntry{})
	}
	entry := e.(*accessEntry)
	entry.count.Add(1)
	entry.last.Store(now.Unix())
}

// admit decides where a new kind goes: itself, the caller's "*" once it
// has many paths, or nowhere when the whole is full.
func (o *observedAccess) admit(k accessKey) (accessKey, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	caller := k
	caller.path = ""
	if k.path != "" && o.paths[caller] >= maxPathsPerCaller {
		k.path = "*"
	}
	if _, ok := o.entries.Load(k); ok {
		return k, true
	}
	if o.size.Load() >= maxObserved {
		return k, false
	}
	if k.path != "" && k.path != "*" {
		if o.paths == nil {
			o.paths = map[accessKey]int{}
		}
		o.paths[caller]++
	}
	o.size.Add(1)
	return k, true
}

// list returns what was seen since (all with a zero since), sorted.
func (o *observedAccess) list(since time.Time) []ObservedAccess {
	var out []ObservedAccess
	o.entries.Range(func(key, value any) bool {
		k, e := key.(accessKey), value.(*accessEntry)
		last := time.Unix(e.last.Load(), 0)
		if last.Before(since) {
			return true
		}
		out = append(out, ObservedAccess{Principal: k.principal, Namespace: k.namespace, Port: k.port, Method: k.method, Path: k.path,
			Count: e.count.Load(), Last: last})
		return true
	})
	slices.SortFunc(out, func(a, b ObservedAccess) int {
		return cmp.Or(strings.Compare(a.Principal, b.Principal), cmp.Compare(a.Port, b.Port),
			strings.Compare(a.Method, b.Method), strings.Compare(a.Path, b.Path))
	})
	return out
}

// clip keeps at most n bytes of valid UTF-8.
func clip(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, string(utf8.RuneError))
}

// observe remembers a request (or connection) the inbound side let in.
func (in *Inbound) observe(src telemetry.Peer, mutualTLS bool, port uint16, method, path string) {
	principal, namespace := "", ""
	if mutualTLS {
		principal, namespace = strings.TrimPrefix(src.Principal, "spiffe://"), src.Namespace
	}
	in.observed.record(principal, namespace, port, method, path, time.Now())
}

// Observed is what the inbound side let in since (all with a zero since),
// and how many kinds were not remembered for want of room.
func (in *Inbound) Observed(since time.Time) (seen []ObservedAccess, overflow int64) {
	return in.observed.list(since), in.observed.overflow.Load()
}
