// Package telemetry records the proxy's metrics under Istio's standard names
// and labels (istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes, istio_response_bytes, istio_request_messages_total,
// istio_response_messages_total, istio_tcp_*), so existing
// Kiali, Grafana dashboards and alerts work unchanged. Exposed in
// Prometheus text format; the proxy serves it on :15020/stats/prometheus.
//
// Request recording is lock-free on the hot path: each distinct label set
// resolves its metric children once and caches them. TCP connections
// resolve theirs once per connection.
package telemetry

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-mesh/trellis/internal/version"
)

// Peer describes one end of a request for labels.
type Peer struct {
	Workload, Namespace, Principal, App, Version string
	CanonicalService, CanonicalRevision          string
}

// PeerFromLabels fills a Peer from a workload's pod labels with Istio's
// canonical-name rules: service.istio.io/canonical-name, else
// app.kubernetes.io/name, else app, else the workload name; revision from
// service.istio.io/canonical-revision, else app.kubernetes.io/version, else
// version, else "latest".
func PeerFromLabels(workload, namespace, principal string, labels map[string]string) Peer {
	first := func(def string, keys ...string) string {
		for _, k := range keys {
			if v := labels[k]; v != "" {
				return v
			}
		}
		return def
	}
	return Peer{
		Workload: workload, Namespace: namespace, Principal: principal,
		App:               first("unknown", "app", "app.kubernetes.io/name"),
		Version:           first("unknown", "version", "app.kubernetes.io/version"),
		CanonicalService:  first(workload, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app"),
		CanonicalRevision: first("latest", "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"),
	}
}

// Unknown is the peer of requests from outside the mesh.
var Unknown = Peer{Workload: "unknown", Namespace: "unknown", Principal: "unknown", App: "unknown",
	Version: "unknown", CanonicalService: "unknown", CanonicalRevision: "unknown"}

// Request is one finished HTTP or gRPC request.
type Request struct {
	Reporter     string // "source" or "destination"
	Source, Dest Peer
	// Service is the destination service's host, name and namespace.
	Service, ServiceName, ServiceNamespace string
	Protocol                               string // "http" or "grpc"
	Code                                   int
	GRPCStatus                             string // "" when not gRPC
	MutualTLS                              bool
	Flags                                  string // "-" when none
	Duration                               time.Duration
	RequestBytes, ResponseBytes            int64
	// gRPC messages each way (istio_request_messages_total and
	// istio_response_messages_total); counted only for Protocol "grpc".
	RequestMessages, ResponseMessages int64
	// Method, Path (without the query) and TraceID go to the request's
	// span and access-log entry, never into labels.
	Method, Path, TraceID string
}

// peerLabels are the labels every istio_* metric has: the reporter and both
// ends of the exchange.
var peerLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
}

var requestLabels = slices.Concat(peerLabels,
	[]string{"request_protocol", "response_code", "grpc_response_status", "connection_security_policy", "response_flags"})

// peerValues are the values of peerLabels, in order.
func (m *Metrics) peerValues(reporter string, s, d Peer, service, name, namespace string) []string {
	return []string{
		reporter,
		s.Workload, s.Namespace, s.Principal, s.App, s.Version, s.CanonicalService, s.CanonicalRevision, m.cluster,
		d.Workload, d.Namespace, d.Principal, d.App, d.Version, CleanValue(service), CleanValue(name), CleanValue(namespace),
		d.CanonicalService, d.CanonicalRevision, m.cluster,
	}
}

func securityPolicy(mutualTLS bool) string {
	if mutualTLS {
		return "mutual_tls"
	}
	return "none"
}

// grpcStatusLabel is a gRPC status as a label: one of the 17 codes, "-"
// for none, "unknown" for anything else a peer sent.
func grpcStatusLabel(s string) string {
	if s == "" {
		return "-"
	}
	if n, err := strconv.Atoi(s); err != nil || n < 0 || n > 16 || strconv.Itoa(n) != s {
		return "unknown"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Istio's buckets: milliseconds, and bytes.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	bytesBuckets    = prometheus.ExponentialBuckets(1, 10, 10)
)

// Metrics holds one proxy's metrics. Safe for concurrent use.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reqBytes  *prometheus.HistogramVec
	respBytes *prometheus.HistogramVec
	reqMsgs   *prometheus.CounterVec
	respMsgs  *prometheus.CounterVec
	tcp       tcpMetrics
	authz     *prometheus.CounterVec
	retries   *prometheus.CounterVec
	mirrors   *prometheus.CounterVec
	cluster   string

	childMu   sync.RWMutex
	children  map[requestKey]*children // guarded by childMu
	tcpKeys   sync.Map                 // label key of a TCP series -> struct{}
	series    [2]atomic.Int64          // label sets per reporter: source, destination
	maxSeries int64
	overflow  prometheus.Counter
}

// MaxSeries caps the label sets each reporter keeps, so no caller can grow
// the metrics without bound; an observation that would need one more is
// counted in trellis_proxy_metric_series_overflow_total instead.
const MaxSeries = 10000

func (m *Metrics) seriesOf(reporter string) *atomic.Int64 {
	if reporter == "destination" {
		return &m.series[1]
	}
	return &m.series[0]
}

// admitSeries reports whether a new label set of reporter may be made.
func (m *Metrics) admitSeries(reporter string) bool {
	n := m.seriesOf(reporter)
	if n.Add(1) > m.maxSeries {
		n.Add(-1)
		m.overflow.Inc()
		return false
	}
	return true
}

type children struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
	reqMsgs, respMsgs             prometheus.Counter // nil unless gRPC
}

// New returns empty metrics; cluster fills the *_cluster labels.
func New(cluster string) *Metrics {
	m := &Metrics{
		reg:       prometheus.NewRegistry(),
		cluster:   cluster,
		maxSeries: MaxSeries,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests handled by the proxy.",
		}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Request durations.", Buckets: durationBuckets,
		}, requestLabels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request body sizes.", Buckets: bytesBuckets,
		}, requestLabels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response body sizes.", Buckets: bytesBuckets,
		}, requestLabels),
		reqMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_request_messages_total", Help: "gRPC messages sent by clients.",
		}, requestLabels),
		respMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_response_messages_total", Help: "gRPC messages sent by servers.",
		}, requestLabels),
	}
	m.overflow = prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_proxy_metric_series_overflow_total",
		Help: fmt.Sprintf("Requests and connections not recorded because their reporter already keeps %d label sets.", MaxSeries)})
	m.reg.MustRegister(m.requests, m.duration, m.reqBytes, m.respBytes, m.reqMsgs, m.respMsgs, m.overflow,
		// The process's own cost, as operators read it off any Go
		// service: CPU, memory, file descriptors, goroutines, and the
		// runtime's estimate of the CPU its garbage collector takes.
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/cpu/classes/(gc/total|total):cpu-seconds$`)})))
	m.tcp = newTCPMetrics(m.reg)
	m.authz = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_authz_decisions_total",
		Help: "Authorization decisions by the policy that made them (\"-\": ALLOW policies applied and none matched): " +
			"action ALLOW, DENY or AUDIT; result allowed, denied, audited, or dry_run_allowed and dry_run_denied for what the " +
			"decision would be with the dry-run policies enforced."}, []string{"policy", "action", "result"})
	m.reg.MustRegister(m.authz)
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_route_retries_total",
		Help: "Retries a route's retry policy asked for, by the service retried: outcome retried (reason status, " +
			"timeout or connect), or budget_exhausted when the service's retry budget refused it."},
		[]string{"destination_service", "outcome", "reason"})
	m.mirrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_route_mirrored_requests_total",
		Help: "Copies of requests a route's RequestMirror sent, by the mirror's service: outcome answered, failed, " +
			"dropped (too many copies in flight) or skipped (the request body was too large to copy)."},
		[]string{"destination_service", "outcome"})
	m.reg.MustRegister(m.retries, m.mirrors)
	// Which build answers, as Istio's proxies say it (its mesh dashboard
	// lists components by version from this).
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build",
		Help: "The proxy's build: component and version tag, always 1."}, []string{"component", "tag"})
	build.WithLabelValues("proxy", cmp.Or(version.Tag(), "unknown")).Set(1)
	m.reg.MustRegister(build)
	return m
}

// ObserveRequest records one request.
func (m *Metrics) ObserveRequest(r Request) {
	key := requestKey{reporter: r.Reporter, src: r.Source, dst: r.Dest,
		service: CleanValue(r.Service), name: CleanValue(r.ServiceName), namespace: CleanValue(r.ServiceNamespace),
		protocol: r.Protocol, code: r.Code, grpcStatus: grpcStatusLabel(r.GRPCStatus), mutualTLS: r.MutualTLS, flags: orDash(r.Flags)}
	m.childMu.RLock()
	ch := m.children[key]
	m.childMu.RUnlock()
	if ch == nil {
		if ch = m.newChildren(key); ch == nil {
			return
		}
	}
	ch.requests.Inc()
	ch.duration.Observe(float64(r.Duration) / float64(time.Millisecond))
	ch.reqBytes.Observe(float64(r.RequestBytes))
	ch.respBytes.Observe(float64(r.ResponseBytes))
	if ch.reqMsgs != nil {
		ch.reqMsgs.Add(float64(r.RequestMessages))
		ch.respMsgs.Add(float64(r.ResponseMessages))
	}
}

// requestKey is a request's label set, as labelValues spells it out: a
// comparable value, so that finding its series costs no allocation.
type requestKey struct {
	reporter                 string
	src, dst                 Peer
	service, name, namespace string
	protocol                 string
	code                     int
	grpcStatus               string
	mutualTLS                bool
	flags                    string
}

// newChildren makes the series of key, if its reporter may have one more;
// nil if not.
func (m *Metrics) newChildren(key requestKey) *children {
	m.childMu.Lock()
	defer m.childMu.Unlock()
	if ch := m.children[key]; ch != nil { // another request made it first
		return ch
	}
	if !m.admitSeries(key.reporter) {
		return nil
	}
	values := m.labelValues(key)
	ch := &children{
		requests:  m.requests.WithLabelValues(values...),
		duration:  m.duration.WithLabelValues(values...),
		reqBytes:  m.reqBytes.WithLabelValues(values...),
		respBytes: m.respBytes.WithLabelValues(values...),
	}
	if key.protocol == "grpc" {
		ch.reqMsgs, ch.respMsgs = m.reqMsgs.WithLabelValues(values...), m.respMsgs.WithLabelValues(values...)
	}
	if m.children == nil {
		m.children = map[requestKey]*children{}
	}
	m.children[key] = ch
	return ch
}

func (m *Metrics) labelValues(k requestKey) []string {
	return append(m.peerValues(k.reporter, k.src, k.dst, k.service, k.name, k.namespace),
		k.protocol, strconv.Itoa(k.code), k.grpcStatus, securityPolicy(k.mutualTLS), k.flags)
}

// Authorization counts one authorization decision. The policy names come
// from the proxy's config, never from the wire, so they are bounded.
func (m *Metrics) Authorization(policy, action, result string) {
	m.authz.WithLabelValues(orDash(policy), action, result).Inc()
}

// Retry counts a retry of a request to service: outcome "retried" with
// the reason, or "budget_exhausted". A nil m counts nothing.
func (m *Metrics) Retry(service, outcome, reason string) {
	if m != nil {
		m.retries.WithLabelValues(CleanValue(service), outcome, orDash(reason)).Inc()
	}
}

// Mirror counts a copy of a request meant for service (see
// trellis_route_mirrored_requests_total). A nil m counts nothing.
func (m *Metrics) Mirror(service, outcome string) {
	if m != nil {
		m.mirrors.WithLabelValues(CleanValue(service), outcome).Inc()
	}
}

// CountFunc exposes a counter its caller keeps (a process-wide atomic)
// under name.
func (m *Metrics) CountFunc(name, help string, value func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, value))
}

// Handler serves the metrics in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Connection is one TCP connection the proxy tunnelled, for the istio_tcp_*
// metrics. As in Istio, both reporters count "received" bytes in the
// request direction (client to server) and "sent" bytes in the response
// direction.
type Connection struct {
	Reporter                               string
	Source, Dest                           Peer
	Service, ServiceName, ServiceNamespace string
	MutualTLS                              bool
	Flags                                  string
}

var tcpLabels = slices.Concat(peerLabels, []string{"request_protocol", "connection_security_policy", "response_flags"})

// tcpMetrics are registered by New.
type tcpMetrics struct {
	opened, closed, sent, received *prometheus.CounterVec
}

func newTCPMetrics(reg *prometheus.Registry) tcpMetrics {
	c := func(name, help string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels)
		reg.MustRegister(v)
		return v
	}
	return tcpMetrics{
		opened:   c("istio_tcp_connections_opened_total", "TCP connections opened."),
		closed:   c("istio_tcp_connections_closed_total", "TCP connections closed."),
		sent:     c("istio_tcp_sent_bytes_total", "Bytes in the response direction (server to client)."),
		received: c("istio_tcp_received_bytes_total", "Bytes in the request direction (client to server)."),
	}
}

// Opened records a new tunnelled connection and returns the function that
// records its end with the bytes it carried.
func (m *Metrics) Opened(c Connection) (closed func(sent, received int64)) {
	values := append(m.peerValues(c.Reporter, c.Source, c.Dest, c.Service, c.ServiceName, c.ServiceNamespace),
		"tcp", securityPolicy(c.MutualTLS), orDash(c.Flags))
	key := strings.Join(values, "\x00")
	if _, ok := m.tcpKeys.Load(key); !ok {
		if !m.admitSeries(c.Reporter) {
			return func(int64, int64) {}
		}
		if _, loaded := m.tcpKeys.LoadOrStore(key, struct{}{}); loaded {
			m.seriesOf(c.Reporter).Add(-1)
		}
	}
	m.tcp.opened.WithLabelValues(values...).Inc()
	return func(sent, received int64) {
		m.tcp.sent.WithLabelValues(values...).Add(float64(sent))
		m.tcp.received.WithLabelValues(values...).Add(float64(received))
		m.tcp.closed.WithLabelValues(values...).Inc()
	}
}
