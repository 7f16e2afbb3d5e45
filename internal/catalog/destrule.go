package catalog

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// KindDestinationRule is Istio's DestinationRule kind.
const KindDestinationRule Kind = "DestinationRule"

// DestinationRule is an Istio DestinationRule (networking.istio.io/v1,
// v1beta1, v1alpha3) as written, as much of it as Trellis applies: how
// the proxies of clients balance and limit the requests they send to one
// Service and when they leave one of its endpoints out. The types carry
// Istio's JSON field names; everything else Istio has is refused when the
// rule is read (internal/manifest), so a rule here means what it says.
type DestinationRule struct {
	Meta
	Spec DestinationRuleSpec
}

// DestinationRuleSpec is a DestinationRule's spec.
type DestinationRuleSpec struct {
	// Host names the Service: its short name (in the rule's namespace),
	// name.namespace, or name.namespace.svc.cluster.local. Required.
	Host          string         `json:"host"`
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty"`
	// Subsets are named groups of the Service's endpoints that a
	// VirtualService destination may send to (its subset field). At most
	// MaxSubsets, their names unique.
	Subsets []Subset `json:"subsets,omitempty"`
}

// MaxSubsets is the most subsets one DestinationRule may have: each is a
// balancer in every client's proxy, and tenants write these rules.
const MaxSubsets = 64

// Subset is one version of a Service: the endpoints whose pods have all
// of Labels, with a traffic policy of its own.
type Subset struct {
	// Name is a DNS-1123 label, unique within the rule. Required.
	Name string `json:"name"`
	// Labels select the subset's endpoints among the Service's: a pod is
	// in the subset when it has every label with the same value. Empty:
	// every endpoint.
	Labels map[string]string `json:"labels,omitempty"`
	// TrafficPolicy nil: the rule's. Otherwise each of its fields that is
	// set (loadBalancer, connectionPool, outlierDetection, retryBudget)
	// replaces the rule's, and the others are the rule's, as Istio merges
	// them.
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty"`
}

// TrafficPolicy is what the rule asks of its clients' proxies.
type TrafficPolicy struct {
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty"`
	RetryBudget      *RetryBudget            `json:"retryBudget,omitempty"`
}

// RetryBudget bounds the retries clients' proxies send the Service,
// Istio's trafficPolicy.retryBudget read as Trellis's budget counts
// retries: over the last 10 seconds, at most Percent of the requests
// plus MinRetryConcurrency a second.
type RetryBudget struct {
	// Percent, 0 to 100, of the requests that may be retried. nil: 20.
	Percent *float64 `json:"percent,omitempty"`
	// MinRetryConcurrency is read as the retries a second always allowed,
	// whatever the requests (Istio counts retries in flight at once,
	// Trellis counts them over a window). nil: 10.
	MinRetryConcurrency *uint32 `json:"minRetryConcurrency,omitempty"`
}

// Istio's simple load balancers that Trellis takes. LEAST_CONN is Istio's
// deprecated name for LEAST_REQUEST.
const (
	LBUnspecified  = "UNSPECIFIED"
	LBRoundRobin   = "ROUND_ROBIN"
	LBLeastRequest = "LEAST_REQUEST"
	LBLeastConn    = "LEAST_CONN"
)

// LoadBalancerSettings picks the load balancer.
type LoadBalancerSettings struct {
	// Simple "" or UNSPECIFIED: Trellis's default, power of two choices
	// over peak-EWMA latency.
	Simple string `json:"simple,omitempty"`
}

// ConnectionPoolSettings bound what one client proxy sends the Service.
// Each field nil: no limit (Istio's default is 2^32-1).
type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty"`
}

// TCPSettings is connectionPool.tcp.
type TCPSettings struct {
	// MaxConnections, at least 1, is read as the most requests in flight
	// (connections carrying one request each, as HTTP/1.1 does).
	MaxConnections *int32 `json:"maxConnections,omitempty"`
}

// HTTPSettings is connectionPool.http.
type HTTPSettings struct {
	// HTTP1MaxPendingRequests, at least 1: the most requests waiting
	// while the limit of requests in flight is reached.
	HTTP1MaxPendingRequests *int32 `json:"http1MaxPendingRequests,omitempty"`
	// HTTP2MaxRequests, at least 1: the most requests in flight.
	HTTP2MaxRequests *int32 `json:"http2MaxRequests,omitempty"`
}

// OutlierDetection says when an endpoint is ejected. The pointers tell an
// explicit 0 (off) from unset (Istio's default).
type OutlierDetection struct {
	// Consecutive5xxErrors nil: 5.
	Consecutive5xxErrors *uint32 `json:"consecutive5xxErrors,omitempty"`
	// ConsecutiveGatewayErrors nil: 0, off.
	ConsecutiveGatewayErrors *uint32 `json:"consecutiveGatewayErrors,omitempty"`
	// Interval is accepted and changes nothing: Trellis ends an ejection
	// when its time is up, not at the next sweep.
	Interval string `json:"interval,omitempty"`
	// BaseEjectionTime "": 30s. At least 1ms, in whole milliseconds.
	BaseEjectionTime string `json:"baseEjectionTime,omitempty"`
	// MaxEjectionPercent 0-100; 0 is unset in Istio's schema, so 10.
	MaxEjectionPercent int32 `json:"maxEjectionPercent,omitempty"`
}

// ClusterDomain ends the Services' full names
// (name.namespace.svc.cluster.local), as the one-host hosts files write
// them.
const ClusterDomain = "cluster.local"

// DestinationHost reads a DestinationRule host written in namespace ns:
// the Service's short name (in ns), name.namespace, or
// name.namespace.svc.<ClusterDomain>. The error says which forms are
// taken.
func DestinationHost(host, ns string) (svcNamespace, svcName string, err error) {
	forms := fmt.Sprintf("name the Service, as reviews, reviews.%s or reviews.%s.svc.%s", ns, ns, ClusterDomain)
	switch {
	case host == "":
		return "", "", fmt.Errorf("is required: %s", forms)
	case strings.Contains(host, "*"):
		return "", "", fmt.Errorf("%q: wildcard hosts are not supported yet; write one DestinationRule per Service, its host the Service's name", host)
	}
	name, full := strings.CutSuffix(host, ".svc."+ClusterDomain)
	parts := strings.Split(name, ".")
	if slices.Contains(parts, "") {
		return "", "", fmt.Errorf("%q is not a host name: %s", host, forms)
	}
	switch {
	case len(parts) == 1 && !full:
		return ns, parts[0], nil
	case len(parts) == 2:
		return parts[1], parts[0], nil
	}
	return "", "", fmt.Errorf("%q names no Service: %s (hosts outside the mesh are not supported)", host, forms)
}

// ParseIstioDuration reads a duration as Istio writes them ("30s",
// "1m", "500ms", "1.5s"): at least 1ms, in whole milliseconds, as
// Istio's validation requires.
func ParseIstioDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration: write it as 30s, 1m or 500ms", s)
	case d < time.Millisecond:
		return 0, fmt.Errorf("%q is less than 1ms: Istio's least duration", s)
	case d%time.Millisecond != 0:
		return 0, fmt.Errorf("%q is not whole milliseconds: round it to them", s)
	}
	return d, nil
}
