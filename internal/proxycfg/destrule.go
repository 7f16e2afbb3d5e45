package proxycfg

import (
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// Istio's defaults for an outlierDetection that leaves them out (Envoy's,
// which Istio passes on): 5 5xx in a row eject, gateway errors do not,
// for 30 s, 10 % of the endpoints at most. maxEjectionPercent 0 is unset
// in Istio's schema, so it is 10 too.
const (
	defaultConsecutive5xx     = 5
	defaultBaseEjection       = 30 * time.Second
	defaultMaxEjectionPercent = 10
)

// Trellis's retry budget without a retryBudget, and for one that leaves
// a field out: Linkerd's 20 % of the requests plus 10 retries a second. Istio's
// minRetryConcurrency default, 3, counts retries in flight, which
// Trellis's budget does not; its percent default is 20 too.
const (
	DefaultRetryPercent   = 20
	DefaultRetriesASecond = 10
)

// ruleIndex holds snap's DestinationRules by the namespace they are in,
// then the Service they are for (ServiceKey).
type ruleIndex map[string]map[string]*catalog.DestinationRule

// indexRules indexes the rules whose host names a Service. Of two rules
// of one namespace for one Service (which manifests refuse, and the
// Kubernetes API server does not), the older is kept, as Istio keeps its
// trafficPolicy; of two as old, the first in snap.
func indexRules(snap *catalog.Snapshot) ruleIndex {
	idx := ruleIndex{}
	for _, dr := range snap.DestinationRules {
		ns, name, err := catalog.DestinationHost(dr.Spec.Host, dr.Namespace)
		if err != nil {
			continue
		}
		if idx[dr.Namespace] == nil {
			idx[dr.Namespace] = map[string]*catalog.DestinationRule{}
		}
		k := ns + "/" + name
		if kept := idx[dr.Namespace][k]; kept == nil || dr.CreationTimestamp.Before(kept.CreationTimestamp) {
			idx[dr.Namespace][k] = dr
		}
	}
	return idx
}

// forService is the rule the clients of svc get when their own namespace
// has none for it: the Service's namespace's, else a root namespace's
// (Trellis's ahead of Istio's), as Istio looks them up.
func (idx ruleIndex) forService(svc *meshpb.Service) *catalog.DestinationRule {
	k := ServiceKey(svc)
	if dr := idx[svc.GetNamespace()][k]; dr != nil {
		return dr
	}
	for _, root := range catalog.RootNamespaces {
		if dr := idx[root][k]; dr != nil {
			return dr
		}
	}
	return nil
}

// forClients is svc as the proxies of namespace ns see it: with ns's own
// rule for it when ns has one that is not the rule svc carries already
// (a clone then; svc is shared), else svc itself.
func (idx ruleIndex) forClients(svc *meshpb.Service, ns string) (*meshpb.Service, bool) {
	dr := idx[ns][ServiceKey(svc)]
	if dr == nil || dr == idx.forService(svc) {
		return svc, false
	}
	c := proto.Clone(svc).(*meshpb.Service)
	applyRule(c, dr)
	return c, true
}

// applyRule gives svc what dr asks of its clients' proxies: its policy
// and its subsets, replacing any other rule's.
func applyRule(svc *meshpb.Service, dr *catalog.DestinationRule) {
	svc.LoadBalancing, svc.TrafficPolicy = DestinationPolicy(dr)
	svc.Subsets = nil
	for _, sub := range dr.Spec.Subsets {
		out := &meshpb.Subset{Name: sub.Name, Labels: sub.Labels}
		out.LoadBalancing, out.TrafficPolicy = policy(dr, subsetPolicy(dr.Spec.TrafficPolicy, sub.TrafficPolicy))
		svc.Subsets = append(svc.Subsets, out)
	}
}

// subsetPolicy is a subset's effective traffic policy, as Istio merges
// it: each field the subset's own policy sets replaces the rule's whole,
// the others are the rule's. nil when neither sets anything.
func subsetPolicy(rule, own *catalog.TrafficPolicy) *catalog.TrafficPolicy {
	if own == nil {
		return rule
	}
	merged := catalog.TrafficPolicy{}
	if rule != nil {
		merged = *rule
	}
	if own.LoadBalancer != nil {
		merged.LoadBalancer = own.LoadBalancer
	}
	if own.ConnectionPool != nil {
		merged.ConnectionPool = own.ConnectionPool
	}
	if own.OutlierDetection != nil {
		merged.OutlierDetection = own.OutlierDetection
	}
	if own.RetryBudget != nil {
		merged.RetryBudget = own.RetryBudget
	}
	return &merged
}

// DestinationPolicy is what dr asks of its clients' proxies, with Istio's
// defaults filled in so that the proxy applies each value as it is.
func DestinationPolicy(dr *catalog.DestinationRule) (meshpb.LoadBalancing, *meshpb.TrafficPolicy) {
	return policy(dr, dr.Spec.TrafficPolicy)
}

// policy is spec, a traffic policy of dr (its own or a subset's), as the
// proxy applies it.
func policy(dr *catalog.DestinationRule, spec *catalog.TrafficPolicy) (meshpb.LoadBalancing, *meshpb.TrafficPolicy) {
	tp := &meshpb.TrafficPolicy{Source: dr.Namespace + "/" + dr.Name}
	if spec == nil {
		return meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA, tp
	}
	tp.ConnectionPool = connectionPool(spec.ConnectionPool)
	tp.OutlierDetection = outlierDetection(spec.OutlierDetection)
	tp.RetryBudget = retryBudget(spec.RetryBudget)
	return loadBalancing(spec.LoadBalancer), tp
}

// loadBalancing maps Istio's simple load balancer; UNSPECIFIED, and
// anything the manifest refuses, is Trellis's default.
func loadBalancing(lb *catalog.LoadBalancerSettings) meshpb.LoadBalancing {
	if lb == nil {
		return meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA
	}
	switch lb.Simple {
	case catalog.LBRoundRobin:
		return meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN
	case catalog.LBLeastRequest, catalog.LBLeastConn:
		return meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST
	}
	return meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA
}

// connectionPool is the lower of http2MaxRequests and maxConnections
// (each connection read as carrying one request) as the most requests in
// flight, http1MaxPendingRequests as the most waiting, and maxConnections
// as the most TCP connections open; nil when none is set. Values below 1,
// which the manifest refuses, count as unset.
func connectionPool(cp *catalog.ConnectionPoolSettings) *meshpb.ConnectionPool {
	if cp == nil {
		return nil
	}
	var limits []int32
	out := &meshpb.ConnectionPool{}
	if cp.TCP != nil && cp.TCP.MaxConnections != nil && *cp.TCP.MaxConnections > 0 {
		limits = append(limits, *cp.TCP.MaxConnections)
		out.MaxConnections = uint32(*cp.TCP.MaxConnections)
	}
	if h := cp.HTTP; h != nil {
		if h.HTTP2MaxRequests != nil && *h.HTTP2MaxRequests > 0 {
			limits = append(limits, *h.HTTP2MaxRequests)
		}
		if h.HTTP1MaxPendingRequests != nil && *h.HTTP1MaxPendingRequests > 0 {
			out.MaxPending = proto.Uint32(uint32(*h.HTTP1MaxPendingRequests))
		}
	}
	if len(limits) > 0 {
		out.MaxRequests = uint32(slices.Min(limits))
	}
	if out.MaxRequests == 0 && out.MaxPending == nil && out.MaxConnections == 0 {
		return nil
	}
	return out
}

// outlierDetection fills Istio's defaults in; a value the manifest
// refuses counts as unset.
func outlierDetection(od *catalog.OutlierDetection) *meshpb.OutlierDetection {
	if od == nil {
		return nil
	}
	out := &meshpb.OutlierDetection{Consecutive_5Xx: defaultConsecutive5xx,
		BaseEjectionMs: uint32(defaultBaseEjection.Milliseconds()), MaxEjectionPercent: defaultMaxEjectionPercent}
	if od.Consecutive5xxErrors != nil {
		out.Consecutive_5Xx = *od.Consecutive5xxErrors
	}
	if od.ConsecutiveGatewayErrors != nil {
		out.ConsecutiveGateway = *od.ConsecutiveGatewayErrors
	}
	if d, err := catalog.ParseIstioDuration(od.BaseEjectionTime); err == nil && d.Milliseconds() <= math.MaxUint32 {
		out.BaseEjectionMs = uint32(d.Milliseconds())
	}
	if p := od.MaxEjectionPercent; p > 0 && p <= 100 {
		out.MaxEjectionPercent = uint32(p)
	}
	return out
}

// retryBudget fills Trellis's defaults in; nil when rb is. A percent the
// manifest refuses counts as unset.
func retryBudget(rb *catalog.RetryBudget) *meshpb.RetryBudget {
	if rb == nil {
		return nil
	}
	out := &meshpb.RetryBudget{Percent: DefaultRetryPercent, MinRetriesPerSecond: DefaultRetriesASecond}
	if p := rb.Percent; p != nil && *p >= 0 && *p <= 100 {
		out.Percent = *p
	}
	if n := rb.MinRetryConcurrency; n != nil {
		out.MinRetriesPerSecond = *n
	}
	return out
}
