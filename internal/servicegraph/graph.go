package servicegraph

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// Graph is the service graph over one window. Its JSON is what the
// dashboard draws and /api/graph serves.
type Graph struct {
	Window     string    `json:"window"`
	End        time.Time `json:"end"`
	Namespaces []string  `json:"namespaces"`
	Nodes      []*Node   `json:"nodes"`
	Edges      []*Edge   `json:"edges"`
}

// Node kinds, drawn as Kiali draws them.
const (
	KindService  = "service"  // a triangle
	KindWorkload = "workload" // a square
	KindUnknown  = "unknown"  // callers outside the mesh, whose identity is not known
)

// Health of a node from the error share of its requests in the window
// (Kiali's default thresholds: 0.1 % degraded, 20 % failing).
const (
	Healthy  = "healthy"
	Degraded = "degraded"
	Failing  = "failure"
	Idle     = "idle" // no requests in the window
)

// Node is a service, a workload, or the unknown caller.
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Sidecar: a workload that runs a Trellis proxy. Workloads without one
	// are outside the mesh; their calls arrive from KindUnknown.
	Sidecar bool    `json:"sidecar"`
	Health  string  `json:"health"`
	RPS     float64 `json:"rps"`       // requests in and out per second
	Errors  float64 `json:"errorRate"` // share of those that failed, 0..1
	// Routes, on a service, are routes' splits of its requests among its
	// own DestinationRule subsets: configuration kept on the node, as
	// the requests stay with the service (no edge to itself).
	Routes []RouteShare `json:"routes,omitempty"`
}

// Edge is traffic of one protocol from one node to another.
type Edge struct {
	ID       string `json:"id"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"` // http, grpc, tcp; ip for packets a NetworkPolicy dropped
	// Requests (HTTP and gRPC) or connections (TCP) in the window, and
	// per second.
	Requests float64 `json:"requests"`
	RPS      float64 `json:"rps"`
	// ErrorRate is the share of failed requests: 5xx (or no response) for
	// HTTP, a non-OK status for gRPC.
	ErrorRate float64 `json:"errorRate"`
	// Latency percentiles in milliseconds; absent without requests.
	P50 *float64 `json:"p50,omitempty"`
	P95 *float64 `json:"p95,omitempty"`
	P99 *float64 `json:"p99,omitempty"`
	// MTLS is the share of the traffic that was mutual TLS, 0..1.
	MTLS float64 `json:"mtls"`
	// BytesPerSec in both directions (TCP).
	BytesPerSec float64 `json:"bytesPerSec,omitempty"`
	// Denied: these were refused (by network policy, by an
	// AuthorizationPolicy, or plaintext at a STRICT mTLS port); Requests
	// counts the refusals, Reason says which.
	Denied bool   `json:"denied,omitempty"`
	Reason string `json:"reason,omitempty"`
	// AuthzDenied counts the requests (or connections) of the window an
	// AuthorizationPolicy refused (Envoy's flag RBAC); when it is all of
	// them, the edge is Denied. They are not errors of the destination.
	AuthzDenied float64 `json:"authzDenied,omitempty"`
	// Routes, on an edge of protocol "route" from a Service to a backend
	// Service, are the routes that send requests for the one to the
	// other, with their shares: configuration, not traffic (the traffic
	// is on the edges into the backend).
	Routes []RouteShare `json:"routes,omitempty"`
}

// ProtocolRoute marks the edges of routes' splits.
const ProtocolRoute = "route"

// RouteShare is the share of one rule's requests a route sends to a
// backend.
type RouteShare struct {
	Route string  `json:"route"` // KIND NAMESPACE/NAME
	Rule  int     `json:"rule"`
	Share float64 `json:"share"` // 0..1
	// Consumers is the namespace whose clients the route applies to; ""
	// for every client.
	Consumers string `json:"consumers,omitempty"`
	// Invalid: the backend does not resolve; its share of requests gets
	// 500.
	Invalid bool `json:"invalid,omitempty"`
	// Subset, when not empty, is the backend's DestinationRule subset the
	// share goes to; each subset has a share of its own.
	Subset string `json:"subset,omitempty"`
}

// Inventory is what exists, traffic or not: the graph shows idle
// services and workloads too, and knows which workloads are meshed.
type Inventory struct {
	Services  []Ref
	Workloads []Workload
	// Pods maps "namespace/pod" to its workload's name, to place the node
	// agent's per-pod denials.
	Pods map[string]string
	// Splits are where routes send requests for a Service: drawn as
	// edges of protocol "route".
	Splits []Split
}

// Split is one backend of one rule of a route attached to a Service.
type Split struct {
	Parent, Backend Ref
	RouteShare
}

// Ref names a service.
type Ref struct{ Namespace, Name string }

// Workload is a Deployment (or a bare pod).
type Workload struct {
	Namespace, Name string
	Sidecar         bool
}

// Options select the window; a zero End is now.
type Options struct {
	Window    time.Duration
	End       time.Time
	Inventory Inventory
	// Namespaces, when set, keeps only nodes in (and edges touching)
	// these namespaces.
	Namespaces []string
}

// request labels the graph groups istio_requests_total by.
var requestBy = []string{"reporter", "source_workload", "source_workload_namespace", "destination_principal",
	"destination_service_name", "destination_service_namespace", "destination_workload", "destination_workload_namespace",
	"request_protocol", "response_code", "grpc_response_status", "connection_security_policy", "response_flags"}

var latencyBy = []string{"reporter", "source_workload", "source_workload_namespace", "destination_principal",
	"destination_service_name", "destination_service_namespace", "destination_workload", "destination_workload_namespace",
	"request_protocol", "le"}

var tcpBy = []string{"reporter", "source_workload", "source_workload_namespace", "destination_principal",
	"destination_service_name", "destination_service_namespace", "destination_workload", "destination_workload_namespace",
	"connection_security_policy", "response_flags"}

// Build computes the graph from src.
func Build(ctx context.Context, src Source, o Options) (*Graph, error) {
	if o.Window <= 0 {
		return nil, fmt.Errorf("graph window %s: give a positive duration such as 1m", o.Window)
	}
	end := o.End
	if end.IsZero() {
		end = time.Now()
	}
	q := func(metric string, by []string) ([]Group, error) {
		gs, err := src.Increase(ctx, Query{Metric: metric, By: by, Window: o.Window, End: end})
		// Empty buckets stay: they are the lower bounds of the others.
		return slices.DeleteFunc(gs, func(g Group) bool { return !counted(g.Labels) || (g.Value <= 0 && g.Labels["le"] == "") }), err
	}
	reqs, err := q("istio_requests_total", requestBy)
	if err != nil {
		return nil, err
	}
	buckets, err := q("istio_request_duration_milliseconds_bucket", latencyBy)
	if err != nil {
		return nil, err
	}
	conns, err := q("istio_tcp_connections_opened_total", tcpBy)
	if err != nil {
		return nil, err
	}
	bytesOut, err := q("istio_tcp_sent_bytes_total", tcpBy)
	if err != nil {
		return nil, err
	}
	bytesIn, err := q("istio_tcp_received_bytes_total", tcpBy)
	if err != nil {
		return nil, err
	}
	dropped, err := src.Increase(ctx, Query{Metric: "trellis_netpol_denied_flow_packets_total", Window: o.Window, End: end,
		By: []string{"source_namespace", "source_pod", "destination_namespace", "destination_pod"}})
	if err != nil {
		return nil, err
	}
	b := newBuilder(o, end)
	for _, g := range reqs {
		b.request(g)
	}
	for _, g := range buckets {
		b.bucket(g)
	}
	for _, g := range conns {
		b.tcp(g, false)
	}
	for _, g := range append(bytesOut, bytesIn...) {
		b.tcp(g, true)
	}
	for _, g := range dropped {
		if g.Value > 0 {
			b.policyDrop(g)
		}
	}
	return b.finish(), nil
}

// counted says whether a series is the one report of its traffic: the
// destination's sidecar reports everything it receives; the source's
// report counts only when no sidecar is at the other end (the
// destination's identity is then unknown).
func counted(l map[string]string) bool {
	return l["reporter"] == "destination" || (l["reporter"] == "source" && l["destination_principal"] == "unknown")
}

// failed says whether a request group is an error. A request an
// AuthorizationPolicy refused is the policy working, not an error.
func failed(l map[string]string) bool {
	if l["response_flags"] == "RBAC" {
		return false
	}
	if l["request_protocol"] == "grpc" {
		if s := l["grpc_response_status"]; s != "" && s != "-" {
			return s != "0"
		}
	}
	code, _ := strconv.Atoi(l["response_code"])
	return code == 0 || code >= 500
}

// edgeStats accumulate one edge.
type edgeStats struct {
	edge         *Edge
	failed, mtls float64
	buckets      map[float64]float64
	bytes        float64
	denied       bool
}

type builder struct {
	o     Options
	end   time.Time
	nodes map[string]*Node
	edges map[string]*edgeStats
	// nodeReqs: requests and failures in and out per node.
	nodeReqs map[string][2]float64
}

func newBuilder(o Options, end time.Time) *builder {
	b := &builder{o: o, end: end, nodes: map[string]*Node{}, edges: map[string]*edgeStats{}, nodeReqs: map[string][2]float64{}}
	for _, s := range o.Inventory.Services {
		b.service(s.Namespace, s.Name)
	}
	for _, w := range o.Inventory.Workloads {
		b.workload(w.Namespace, w.Name).Sidecar = w.Sidecar
	}
	for _, sp := range o.Inventory.Splits {
		if sp.Parent == sp.Backend {
			n := b.service(sp.Parent.Namespace, sp.Parent.Name) // a split among its own subsets
			n.Routes = append(n.Routes, sp.RouteShare)
			continue
		}
		e := b.edge(b.service(sp.Parent.Namespace, sp.Parent.Name), b.service(sp.Backend.Namespace, sp.Backend.Name), ProtocolRoute).edge
		e.Routes = append(e.Routes, sp.RouteShare)
	}
	return b
}

func (b *builder) node(id, kind, ns, name string) *Node {
	n := b.nodes[id]
	if n == nil {
		n = &Node{ID: id, Kind: kind, Namespace: ns, Name: name, Health: Idle}
		b.nodes[id] = n
	}
	return n
}

func (b *builder) service(ns, name string) *Node {
	return b.node("svc:"+ns+"/"+name, KindService, ns, name)
}

func (b *builder) workload(ns, name string) *Node {
	if name == "" || name == "unknown" {
		return b.node("unknown", KindUnknown, "", "unknown")
	}
	return b.node("wl:"+ns+"/"+name, KindWorkload, ns, name)
}

// path returns the graph edges one series adds to: source → service →
// workload, or source → workload when no service was addressed.
func (b *builder) path(l map[string]string, protocol string) []*edgeStats {
	src := b.workload(l["source_workload_namespace"], l["source_workload"])
	if l["reporter"] == "destination" {
		src.Sidecar = src.Sidecar || src.Kind == KindWorkload // it sent mTLS with its metadata
	}
	dst := b.workload(l["destination_workload_namespace"], l["destination_workload"])
	if l["reporter"] == "destination" {
		dst.Sidecar = true
	}
	svcName, svcNS := l["destination_service_name"], l["destination_service_namespace"]
	if svcName == "" || svcName == "unknown" {
		return []*edgeStats{b.edge(src, dst, protocol)}
	}
	svc := b.service(svcNS, svcName)
	return []*edgeStats{b.edge(src, svc, protocol), b.edge(svc, dst, protocol)}
}

func (b *builder) edge(from, to *Node, protocol string) *edgeStats {
	id := from.ID + ">" + to.ID + ":" + protocol
	e := b.edges[id]
	if e == nil {
		e = &edgeStats{edge: &Edge{ID: id, Source: from.ID, Target: to.ID, Protocol: protocol}, buckets: map[float64]float64{}}
		b.edges[id] = e
	}
	return e
}

func (b *builder) request(g Group) {
	l := g.Labels
	bad := failed(l)
	for _, e := range b.path(l, l["request_protocol"]) {
		e.edge.Requests += g.Value
		if bad {
			e.failed += g.Value
		}
		if l["response_flags"] == "RBAC" {
			e.edge.AuthzDenied += g.Value
		}
		if l["connection_security_policy"] == "mutual_tls" {
			e.mtls += g.Value
		}
	}
	b.countNode(l["source_workload_namespace"], l["source_workload"], "", g.Value, bad)
	b.countNode(l["destination_workload_namespace"], l["destination_workload"], "", g.Value, bad)
	if s := l["destination_service_name"]; s != "" && s != "unknown" {
		b.countNode(l["destination_service_namespace"], s, "svc", g.Value, bad)
	}
}

func (b *builder) countNode(ns, name, kind string, n float64, bad bool) {
	var id string
	if kind == "svc" {
		id = b.service(ns, name).ID
	} else {
		id = b.workload(ns, name).ID
	}
	c := b.nodeReqs[id]
	c[0] += n
	if bad {
		c[1] += n
	}
	b.nodeReqs[id] = c
}

func (b *builder) bucket(g Group) {
	le, err := strconv.ParseFloat(g.Labels["le"], 64)
	if err != nil {
		return
	}
	for _, e := range b.path(g.Labels, g.Labels["request_protocol"]) {
		if e.edge.Requests > 0 { // requests came first; no edge for buckets alone
			e.buckets[le] += g.Value
		}
	}
}

// tcp adds a connection (or, with bytes, a byte) count. Connections a
// destination refused for want of mTLS carry Envoy's NR flag.
func (b *builder) tcp(g Group, bytes bool) {
	l := g.Labels
	for _, e := range b.path(l, "tcp") {
		if l["response_flags"] == "NR" {
			e.denied = true
			e.edge.Reason = "plaintext refused: STRICT mTLS"
			if !bytes {
				e.edge.Requests += g.Value
			}
			continue
		}
		if l["response_flags"] == "RBAC" {
			if !bytes {
				e.edge.Requests += g.Value
				e.edge.AuthzDenied += g.Value
			}
			continue
		}
		if bytes {
			e.bytes += g.Value
			continue
		}
		e.edge.Requests += g.Value
		if l["connection_security_policy"] == "mutual_tls" {
			e.mtls += g.Value
		}
	}
}

// policyDrop adds packets the node agent dropped for want of a
// NetworkPolicy allowing them, between the pods' workloads.
func (b *builder) policyDrop(g Group) {
	l := g.Labels
	podNode := func(ns, pod string) *Node {
		if pod == "unknown" || pod == "" {
			return b.workload("", "unknown")
		}
		w := b.o.Inventory.Pods[ns+"/"+pod]
		if w == "" {
			w = pod
		}
		return b.workload(ns, w)
	}
	e := b.edge(podNode(l["source_namespace"], l["source_pod"]), podNode(l["destination_namespace"], l["destination_pod"]), "ip")
	e.edge.Requests += g.Value
	e.denied = true
	e.edge.Reason = "dropped: no NetworkPolicy allows it (packets)"
}

func (b *builder) finish() *Graph {
	secs := b.o.Window.Seconds()
	g := &Graph{Window: b.o.Window.String(), End: b.end}
	for _, es := range b.edges {
		e := es.edge
		if e.Requests == 0 && es.bytes == 0 && len(e.Routes) == 0 {
			continue // only empty histogram buckets made it
		}
		if es.denied && es.bytes == 0 && es.mtls == 0 {
			e.Denied = true
		}
		if e.AuthzDenied > 0 && e.AuthzDenied == e.Requests {
			e.Denied, e.Reason = true, "refused by an AuthorizationPolicy (RBAC)"
		}
		e.RPS = e.Requests / secs
		e.BytesPerSec = es.bytes / secs
		if e.Requests > 0 {
			e.ErrorRate = es.failed / e.Requests
			e.MTLS = es.mtls / e.Requests
		}
		e.P50, e.P95, e.P99 = quantile(0.5, es.buckets), quantile(0.95, es.buckets), quantile(0.99, es.buckets)
		g.Edges = append(g.Edges, e)
	}
	for id, n := range b.nodes {
		c := b.nodeReqs[id]
		n.RPS = c[0] / secs
		if c[0] > 0 {
			n.Errors = c[1] / c[0]
			n.Health = healthOf(n.Errors)
		}
		g.Nodes = append(g.Nodes, n)
	}
	g.filter(b.o.Namespaces)
	slices.SortFunc(g.Nodes, func(a, b *Node) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(g.Edges, func(a, b *Edge) int { return cmp.Compare(a.ID, b.ID) })
	seen := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Namespace != "" && !seen[n.Namespace] {
			seen[n.Namespace] = true
			g.Namespaces = append(g.Namespaces, n.Namespace)
		}
	}
	slices.Sort(g.Namespaces)
	return g
}

func healthOf(errRate float64) string {
	switch {
	case errRate >= 0.2:
		return Failing
	case errRate >= 0.001:
		return Degraded
	}
	return Healthy
}

// filter keeps the nodes in namespaces (all when empty), edges that touch
// one of them, and the nodes at the other end of those edges.
func (g *Graph) filter(namespaces []string) {
	if len(namespaces) == 0 {
		return
	}
	byID := map[string]*Node{}
	for _, n := range g.Nodes {
		byID[n.ID] = n
	}
	keep := map[string]bool{}
	for _, n := range g.Nodes {
		if slices.Contains(namespaces, n.Namespace) {
			keep[n.ID] = true
		}
	}
	g.Edges = slices.DeleteFunc(g.Edges, func(e *Edge) bool { return !keep[e.Source] && !keep[e.Target] })
	for _, e := range g.Edges {
		keep[e.Source], keep[e.Target] = true, true
	}
	g.Nodes = slices.DeleteFunc(g.Nodes, func(n *Node) bool { return !keep[n.ID] })
}

// quantile estimates the q-quantile from cumulative buckets (upper bound
// -> count) as Prometheus's histogram_quantile does: linear within the
// bucket. Nil without observations.
func quantile(q float64, buckets map[float64]float64) *float64 {
	bounds := make([]float64, 0, len(buckets))
	for le := range buckets {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 || !math.IsInf(bounds[len(bounds)-1], 1) {
		return nil
	}
	total := buckets[bounds[len(bounds)-1]]
	if total <= 0 {
		return nil
	}
	rank := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, le := range bounds {
		c := buckets[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				v := prevBound // beyond the last finite bucket: its bound
				return &v
			}
			v := prevBound
			if c > prevCount {
				v += (le - prevBound) * (rank - prevCount) / (c - prevCount)
			}
			return &v
		}
		prevBound, prevCount = le, c
	}
	return nil
}

// Point is one moment of a node's or an edge's golden metrics.
type Point struct {
	T         time.Time `json:"t"`
	RPS       float64   `json:"rps"`
	ErrorRate float64   `json:"errorRate"`
	P50       *float64  `json:"p50,omitempty"`
	P95       *float64  `json:"p95,omitempty"`
	P99       *float64  `json:"p99,omitempty"`
}

// Series returns points golden-metric points over window for the node or
// edge with id (as in a Graph), oldest first. Each point's figures are
// over lookback, so points stay meaningful when they are closer together
// than the scrape interval.
func Series(ctx context.Context, src Source, id string, window, lookback time.Duration, points int, end time.Time) ([]Point, error) {
	if points < 2 || window <= 0 {
		return nil, fmt.Errorf("series over %s in %d points: want a positive window and 2 points or more", window, points)
	}
	if end.IsZero() {
		end = time.Now()
	}
	step := window / time.Duration(points-1)
	out := make([]Point, 0, points)
	for i := range points {
		at := end.Add(-time.Duration(points-1-i) * step)
		g, err := Build(ctx, src, Options{Window: lookback, End: at})
		if err != nil {
			return nil, err
		}
		p := Point{T: at}
		for _, e := range g.Edges {
			if e.ID == id {
				p.RPS, p.ErrorRate, p.P50, p.P95, p.P99 = e.RPS, e.ErrorRate, e.P50, e.P95, e.P99
			}
		}
		for _, n := range g.Nodes {
			if n.ID == id {
				p.RPS, p.ErrorRate = n.RPS, n.Errors
			}
		}
		out = append(out, p)
	}
	return out, nil
}
