package telemetry

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// RecentSize is how many requests a proxy remembers for the dashboard.
const RecentSize = 200

// Recent is one finished request as the dashboard lists it: no headers,
// no query string, no body.
type Recent struct {
	Seq                             uint64    `json:"seq"`
	Time                            time.Time `json:"time"`
	Reporter                        string    `json:"reporter"`
	SourceWorkload, SourceNamespace string    `json:"-"`
	Source                          string    `json:"source"`      // namespace/workload, or "unknown"
	Dest                            string    `json:"destination"` // namespace/workload
	DestPrincipal                   string    `json:"destinationPrincipal"`
	ServiceName                     string    `json:"serviceName"`
	ServiceNamespace                string    `json:"serviceNamespace"`
	Protocol                        string    `json:"protocol"`
	Method                          string    `json:"method"`
	Path                            string    `json:"path"`
	Code                            int       `json:"code"`
	GRPCStatus                      string    `json:"grpcStatus,omitempty"`
	DurationMS                      float64   `json:"durationMs"`
	Flags                           string    `json:"flags,omitempty"`
	MutualTLS                       bool      `json:"mtls"`
	TraceID                         string    `json:"traceId,omitempty"`
}

// recentRing keeps the last RecentSize requests. Safe for concurrent use.
type recentRing struct {
	mu   sync.Mutex
	buf  [RecentSize]Recent // guarded by mu
	next uint64             // guarded by mu: the Seq of the next request
}

// maxPath bounds a remembered path.
const maxPath = 256

func (r *recentRing) add(req Request) {
	path := req.Path
	if len(path) > maxPath {
		path = path[:maxPath] + "…"
	}
	rec := Recent{Time: time.Now(), Reporter: req.Reporter,
		Source: peerName(req.Source), Dest: peerName(req.Dest), DestPrincipal: req.Dest.Principal,
		ServiceName: req.ServiceName, ServiceNamespace: req.ServiceNamespace, Protocol: req.Protocol,
		Method: req.Method, Path: path, Code: req.Code, GRPCStatus: req.GRPCStatus,
		DurationMS: float64(req.Duration.Microseconds()) / 1000, Flags: req.Flags, MutualTLS: req.MutualTLS, TraceID: req.TraceID}
	r.mu.Lock()
	rec.Seq = r.next
	r.buf[r.next%RecentSize] = rec
	r.next++
	r.mu.Unlock()
}

func peerName(p Peer) string {
	if p.Workload == "" || p.Workload == "unknown" {
		return "unknown"
	}
	return p.Namespace + "/" + p.Workload
}

// since returns the remembered requests with Seq >= after, oldest first,
// and the Seq the next request will get.
func (r *recentRing) since(after uint64) ([]Recent, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := after
	if r.next > RecentSize && first < r.next-RecentSize {
		first = r.next - RecentSize
	}
	out := make([]Recent, 0, r.next-min(first, r.next))
	for s := first; s < r.next; s++ {
		out = append(out, r.buf[s%RecentSize])
	}
	return out, r.next
}

// RecentPage is what RecentHandler serves.
type RecentPage struct {
	// Next is the Seq the next request will get. Lower than the ?after a
	// poller gave: the proxy restarted, and its count with it.
	Next     uint64   `json:"next"`
	Requests []Recent `json:"requests"` // oldest first
}

// RecentHandler serves the remembered requests as a RecentPage; ?after=N
// leaves out those with a lower Seq (what a poller has seen).
func (m *Metrics) RecentHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var after uint64
		if v := r.URL.Query().Get("after"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				http.Error(w, "after: give the Seq of the first request wanted", http.StatusBadRequest)
				return
			}
			after = n
		}
		var page RecentPage
		page.Requests, page.Next = m.recent.since(after)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	})
}
