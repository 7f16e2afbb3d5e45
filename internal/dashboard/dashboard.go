// Package dashboard is the mesh's web UI and its JSON API: the live
// service graph (drawn with cytoscape, vendored under assets/vendor),
// golden-metric charts per node and edge, and their most recent requests
// (from the spans the sidecars send over mutual TLS).
// The control plane serves it on 127.0.0.1:20001; `trellis dashboard`
// opens it and `trellis graph` prints /api/graph.
//
// The assets are plain ES modules embedded in the binary: no build step.
package dashboard

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
	"github.com/trellis-mesh/trellis/internal/tracestore"
)

//go:embed assets
var assets embed.FS

// Config says where the dashboard's figures come from.
type Config struct {
	// Source answers the graph's queries. Required.
	Source servicegraph.Source
	// Inventory lists what exists, for idle nodes and sidecar marks. Nil
	// for none.
	Inventory func() servicegraph.Inventory
	// Requests lists the most recent requests, newest first. Nil for none.
	Requests func() []Request
	// Traces returns the spans of a trace by its ID. Nil for none.
	Traces func(id string) []tracestore.Span
	// Targets reports the scrape targets (the local store). Nil for none.
	Targets func() []metricstore.TargetStatus
	// Lookback is the span each chart point covers. Default 15 s.
	Lookback time.Duration
	// Hosts are the host names the dashboard answers to besides loopback
	// names and IP literals (--dashboard-host): a page of another site
	// whose name resolves to the dashboard (DNS rebinding) is refused.
	Hosts []string
}

// Request is one recent request, as its sidecars' spans tell it: its
// ends and service named by graph node IDs.
type Request struct {
	Time        time.Time `json:"time"`
	Source      string    `json:"source"`
	Service     string    `json:"service,omitempty"`
	Destination string    `json:"destination"`
	Protocol    string    `json:"protocol"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Code        int       `json:"code"`
	GRPCStatus  string    `json:"grpcStatus,omitempty"`
	DurationMS  float64   `json:"durationMs"`
	Flags       string    `json:"flags,omitempty"`
	MutualTLS   bool      `json:"mtls"`
	TraceID     string    `json:"traceId"`
}

// RequestsFromSpans lists the requests spans (newest first, as
// tracestore.Store.Recent gives them) record, counted once as the graph
// counts them: from the destination's span, or the source's when no
// sidecar is at the other end.
func RequestsFromSpans(spans []tracestore.Span) []Request {
	var out []Request
	for _, sp := range spans {
		a := sp.Attributes
		if a["istio.reporter"] != "destination" && !(a["istio.reporter"] == "source" && a["istio.destination_principal"] == "unknown") {
			continue
		}
		code, _ := strconv.Atoi(a["http.response.status_code"])
		r := Request{Time: sp.Start, Source: nodeID(a["istio.source_workload"]), Destination: nodeID(a["istio.destination_workload"]),
			Protocol: a["istio.request_protocol"], Method: a["http.request.method"], Path: a["url.path"], Code: code,
			GRPCStatus: a["istio.grpc_status"], DurationMS: float64(sp.DurationUS) / 1000, MutualTLS: a["istio.mutual_tls"] == "true",
			TraceID: sp.TraceID}
		if f := a["istio.response_flags"]; f != "-" {
			r.Flags = f
		}
		if n := a["istio.destination_service_name"]; n != "" && n != "unknown" {
			r.Service = "svc:" + a["istio.destination_service_namespace"] + "/" + n
		}
		out = append(out, r)
	}
	return out
}

// nodeID is the graph node of a "namespace/workload" (or "unknown").
func nodeID(nsName string) string {
	if nsName == "unknown" || nsName == "" || strings.HasSuffix(nsName, "/unknown") {
		return "unknown"
	}
	return "wl:" + nsName
}

// Windows are the time windows the UI offers and the API accepts.
var Windows = []time.Duration{time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute}

// Handler serves the UI at / and the API under /api/.
func Handler(cfg Config) http.Handler {
	if cfg.Lookback <= 0 {
		cfg.Lookback = 15 * time.Second
	}
	s := &server{cfg: cfg}
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /api/graph", s.graph)
	mux.HandleFunc("GET /api/series", s.series)
	mux.HandleFunc("GET /api/requests", s.requests)
	mux.HandleFunc("GET /api/traces/{id}", s.trace)
	mux.HandleFunc("GET /api/targets", func(w http.ResponseWriter, _ *http.Request) {
		out := []metricstore.TargetStatus{}
		if cfg.Targets != nil {
			out = cfg.Targets()
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/windows", func(w http.ResponseWriter, _ *http.Request) {
		var ws []string
		for _, d := range Windows {
			ws = append(ws, shortDuration(d))
		}
		writeJSON(w, http.StatusOK, ws)
	})
	return checkOrigin(cfg.Hosts, mux)
}

// checkOrigin refuses requests whose Host is not the dashboard's (a name
// an attacker's page made resolve to it: DNS rebinding), and requests
// other than GET and HEAD that come from another origin.
func checkOrigin(hosts []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		_, ipErr := netip.ParseAddr(host)
		if ipErr != nil && host != "localhost" && !slices.Contains(hosts, host) {
			http.Error(w, fmt.Sprintf("the dashboard does not answer to host %q: open it by IP address or localhost, or start the control plane with --dashboard-host %s", host, host), http.StatusMisdirectedRequest)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o != "" {
				if u, err := url.Parse(o); err != nil || u.Host != r.Host {
					http.Error(w, "cross-origin request refused", http.StatusForbidden)
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

type server struct{ cfg Config }

// window reads ?window= (default 1m), refusing what the UI does not offer
// beyond the store's reach.
func window(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("window")
	if v == "" {
		return time.Minute, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 10*time.Second || d > 24*time.Hour {
		return 0, fmt.Errorf("window %q: give a duration from 10s to 24h, such as 1m or 5m", v)
	}
	return d, nil
}

func (s *server) graph(w http.ResponseWriter, r *http.Request) {
	win, err := window(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	o := servicegraph.Options{Window: win}
	if ns := r.URL.Query().Get("namespaces"); ns != "" {
		o.Namespaces = strings.Split(ns, ",")
	}
	if s.cfg.Inventory != nil {
		o.Inventory = s.cfg.Inventory()
	}
	g, err := servicegraph.Build(r.Context(), s.cfg.Source, o)
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (s *server) series(w http.ResponseWriter, r *http.Request) {
	win, err := window(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id := r.URL.Query().Get("id")
	if id == "" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("give the node or edge as ?id= (an id from /api/graph)"))
		return
	}
	points := 30
	if v := r.URL.Query().Get("points"); v != "" {
		if points, err = strconv.Atoi(v); err != nil || points < 2 || points > 200 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("points %q: give 2 to 200", v))
			return
		}
	}
	ps, err := servicegraph.Series(r.Context(), s.cfg.Source, id, win, s.cfg.Lookback, points, time.Time{})
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, http.StatusOK, ps)
}

// requests answers ?id= (a node or edge) with its latest requests, at
// most ?limit= (default 20).
func (s *server) requests(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		var err error
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 500 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit %q: give 1 to 500", v))
			return
		}
	}
	out := []Request{}
	if s.cfg.Requests != nil {
		for _, req := range s.cfg.Requests() {
			if len(out) == limit {
				break
			}
			if id == "" || involves(req, id) {
				out = append(out, req)
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) trace(w http.ResponseWriter, r *http.Request) {
	var spans []tracestore.Span
	if s.cfg.Traces != nil {
		spans = s.cfg.Traces(r.PathValue("id"))
	}
	if len(spans) == 0 {
		writeError(w, http.StatusNotFound, fmt.Errorf("no trace %q here: it was not sampled, not exported yet, or is older than the newest %d", r.PathValue("id"), tracestore.MaxTraces))
		return
	}
	writeJSON(w, http.StatusOK, spans)
}

// involves says whether a request is part of node or edge id.
func involves(r Request, id string) bool {
	if r.Source == id || r.Service == id || r.Destination == id {
		return true
	}
	from, rest, ok := strings.Cut(id, ">")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i < 0 {
		return false
	}
	to, protocol := rest[:i], rest[i+1:]
	if protocol != r.Protocol || from != r.Source && from != r.Service {
		return false
	}
	return to == r.Service || to == r.Destination
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func shortDuration(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	return strings.TrimSuffix(s, "0m")
}
