package manifest

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// destinationRuleVersions are the apiVersions of a DestinationRule:
// Istio's, preferred as Istio users write it; Trellis's own group (the
// same schema, installed on Kubernetes beside Istio's); Istio's older
// versions, which have the same fields for what Trellis reads.
var destinationRuleVersions = []string{"networking.istio.io/v1", "networking.trellis.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}

// destinationRule is an Istio DestinationRule as written. Its spec names
// every field Istio has, so that one Trellis does not apply is refused by
// name, with the reason and the fix, instead of as an unknown field; a
// field Istio does not have either is unknown. Status is accepted, so
// that `kubectl get -o yaml` output loads, and ignored.
type destinationRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              drSpec          `json:"spec"`
	Status            json.RawMessage `json:"status,omitempty"`
}

// The unsupported fields are kept as whatever they hold (nil when absent
// or null), to be refused when they say anything.
type drSpec struct {
	Host             string           `json:"host"`
	TrafficPolicy    *drTrafficPolicy `json:"trafficPolicy,omitempty"`
	Subsets          []drSubset       `json:"subsets,omitempty"`
	ExportTo         []string         `json:"exportTo,omitempty"`
	WorkloadSelector any              `json:"workloadSelector,omitempty"`
}

type drSubset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	TrafficPolicy *drTrafficPolicy  `json:"trafficPolicy,omitempty"`
}

type drTrafficPolicy struct {
	LoadBalancer      *drLoadBalancer     `json:"loadBalancer,omitempty"`
	ConnectionPool    *drConnectionPool   `json:"connectionPool,omitempty"`
	OutlierDetection  *drOutlierDetection `json:"outlierDetection,omitempty"`
	TLS               any                 `json:"tls,omitempty"`
	PortLevelSettings any                 `json:"portLevelSettings,omitempty"`
	Tunnel            any                 `json:"tunnel,omitempty"`
	ProxyProtocol     any                 `json:"proxyProtocol,omitempty"`
	RetryBudget       *drRetryBudget      `json:"retryBudget,omitempty"`
}

type drRetryBudget struct {
	catalog.RetryBudget
	BudgetInterval any `json:"budgetInterval,omitempty"`
}

type drLoadBalancer struct {
	catalog.LoadBalancerSettings
	ConsistentHash     any `json:"consistentHash,omitempty"`
	LocalityLbSetting  any `json:"localityLbSetting,omitempty"`
	WarmupDurationSecs any `json:"warmupDurationSecs,omitempty"`
	Warmup             any `json:"warmup,omitempty"`
}

type drConnectionPool struct {
	TCP  *drTCP  `json:"tcp,omitempty"`
	HTTP *drHTTP `json:"http,omitempty"`
}

type drTCP struct {
	catalog.TCPSettings
	ConnectTimeout        any `json:"connectTimeout,omitempty"`
	TCPKeepalive          any `json:"tcpKeepalive,omitempty"`
	MaxConnectionDuration any `json:"maxConnectionDuration,omitempty"`
	IdleTimeout           any `json:"idleTimeout,omitempty"`
}

type drHTTP struct {
	catalog.HTTPSettings
	MaxRequestsPerConnection any `json:"maxRequestsPerConnection,omitempty"`
	MaxRetries               any `json:"maxRetries,omitempty"`
	IdleTimeout              any `json:"idleTimeout,omitempty"`
	H2UpgradePolicy          any `json:"h2UpgradePolicy,omitempty"`
	UseClientProtocol        any `json:"useClientProtocol,omitempty"`
	MaxConcurrentStreams     any `json:"maxConcurrentStreams,omitempty"`
}

type drOutlierDetection struct {
	catalog.OutlierDetection
	SplitExternalLocalOriginErrors any `json:"splitExternalLocalOriginErrors,omitempty"`
	ConsecutiveLocalOriginFailures any `json:"consecutiveLocalOriginFailures,omitempty"`
	MinHealthPercent               any `json:"minHealthPercent,omitempty"`
	ConsecutiveErrors              any `json:"consecutiveErrors,omitempty"`
}

func decodeDestinationRule(doc []byte) (catalog.Ref, any, error) {
	var o destinationRule
	if err := strict(doc, &o, "DestinationRule (networking.istio.io/v1)"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: m.Namespace, Name: m.Name}
	spec, err := o.Spec.check(m.Namespace)
	if err != nil {
		return ref, nil, err
	}
	return ref, &catalog.DestinationRule{Meta: m, Spec: spec}, nil
}

// check refuses what Trellis does not apply and values Istio refuses, and
// returns the supported subset.
func (s *drSpec) check(ns string) (catalog.DestinationRuleSpec, error) {
	out := catalog.DestinationRuleSpec{Host: s.Host}
	if _, _, err := catalog.DestinationHost(s.Host, ns); err != nil {
		return out, fmt.Errorf("spec.host %w", err)
	}
	if err := refuse(s.refusals()); err != nil {
		return out, err
	}
	var err error
	if out.TrafficPolicy, err = s.TrafficPolicy.check("spec.trafficPolicy"); err != nil {
		return out, err
	}
	out.Subsets, err = checkSubsets(s.Subsets)
	return out, err
}

// checkSubsets checks subsets as Istio does: each has a name, a DNS-1123
// label unique within the rule, and labels Kubernetes would take; and,
// as Trellis bounds them, there are at most catalog.MaxSubsets. A
// subset's trafficPolicy is checked as the rule's is.
func checkSubsets(in []drSubset) ([]catalog.Subset, error) {
	if len(in) > catalog.MaxSubsets {
		return nil, fmt.Errorf("spec.subsets: %d subsets, more than the %d Trellis takes in one DestinationRule: "+
			"split the Service, or its versions over several Services", len(in), catalog.MaxSubsets)
	}
	var out []catalog.Subset
	first := map[string]int{} // subset name -> its index
	for i, sub := range in {
		path := fmt.Sprintf("spec.subsets[%d]", i)
		if err := checkName(sub.Name, path+".name"); err != nil {
			return nil, err
		}
		if j, dup := first[sub.Name]; dup {
			return nil, fmt.Errorf("%s.name %q: spec.subsets[%d] has the same name; give each subset a name of its own", path, sub.Name, j)
		}
		first[sub.Name] = i
		if err := checkLabels(sub.Labels, path+".labels"); err != nil {
			return nil, err
		}
		tp, err := sub.TrafficPolicy.check(path + ".trafficPolicy")
		if err != nil {
			return nil, err
		}
		out = append(out, catalog.Subset{Name: sub.Name, Labels: sub.Labels, TrafficPolicy: tp})
	}
	return out, nil
}

// check refuses what Trellis does not apply of a trafficPolicy at path
// (the rule's, or a subset's) and values Istio refuses, naming each field
// under path; it returns the supported part, nil for a nil tp.
func (tp *drTrafficPolicy) check(path string) (*catalog.TrafficPolicy, error) {
	if tp == nil {
		return nil, nil
	}
	if err := refuse(tp.refusals(path + ".")); err != nil {
		return nil, err
	}
	out := &catalog.TrafficPolicy{}
	if lb := tp.LoadBalancer; lb != nil {
		if err := checkSimple(path+".loadBalancer.simple", lb.Simple); err != nil {
			return nil, err
		}
		out.LoadBalancer = &lb.LoadBalancerSettings
	}
	if cp := tp.ConnectionPool; cp != nil {
		pool, err := cp.check(path + ".connectionPool.")
		if err != nil {
			return nil, err
		}
		out.ConnectionPool = pool
	}
	if od := tp.OutlierDetection; od != nil {
		if err := checkOutlierDetection(path+".outlierDetection.", &od.OutlierDetection); err != nil {
			return nil, err
		}
		out.OutlierDetection = &od.OutlierDetection
	}
	if rb := tp.RetryBudget; rb != nil {
		if pc := rb.Percent; pc != nil && !(*pc >= 0 && *pc <= 100) {
			return nil, fmt.Errorf("%s.retryBudget.percent %v: write a percentage of the requests, 0 to 100 (leave it out for 20)", path, *pc)
		}
		out.RetryBudget = &rb.RetryBudget
	}
	return out, nil
}

// refusal is a field Trellis does not apply, and why, with the fix.
type refusal struct {
	field string
	value any
	why   string
}

// refuse fails on the first refusal whose field says anything.
func refuse(rs []refusal) error {
	for _, r := range rs {
		if said(r.value) {
			return fmt.Errorf("%s: %s", r.field, r.why)
		}
	}
	return nil
}

// said reports whether a field says anything: absent, null, false, 0, ""
// and empty lists and objects are Istio's defaults, which is what Trellis
// does.
func said(v any) bool {
	rv := reflect.ValueOf(v)
	switch {
	case !rv.IsValid():
		return false
	case rv.Kind() == reflect.Slice || rv.Kind() == reflect.Map:
		return rv.Len() > 0
	}
	return !rv.IsZero()
}

const removeIt = "; remove it"

// refusals lists the spec's own fields Trellis does not apply, in the
// order they are written; its trafficPolicy's are tp.refusals.
func (s *drSpec) refusals() []refusal {
	exportTo := any(s.ExportTo)
	if len(s.ExportTo) == 1 && s.ExportTo[0] == "*" {
		exportTo = nil // what Trellis does
	}
	return []refusal{
		{"spec.exportTo", exportTo, "Trellis does not support exportTo on DestinationRules yet: a rule applies to the clients " +
			`of its own namespace and, in the Service's namespace, to every client (exportTo "*")` + removeIt},
		{"spec.workloadSelector", s.WorkloadSelector, "Trellis does not support workloadSelector yet: a rule applies to every " +
			"client of its namespace" + removeIt},
	}
}

// refusals lists the fields of a trafficPolicy Trellis does not apply, in
// the order they are written, each named under p ("spec.trafficPolicy.",
// or a subset's).
func (tp *drTrafficPolicy) refusals(p string) []refusal {
	rs := []refusal{
		refusal{p + "tls", tp.TLS, "Trellis's sidecars choose TLS themselves: mutual TLS with mesh certificates to endpoints " +
			"with a sidecar (Istio's ISTIO_MUTUAL), plaintext to the others" + removeIt},
		refusal{p + "portLevelSettings", tp.PortLevelSettings, "Trellis does not support per-port traffic policies yet: " +
			"trafficPolicy applies to every port of the Service; move the settings there or remove them"},
		refusal{p + "tunnel", tp.Tunnel, "Trellis does not support tunnel settings" + removeIt},
		refusal{p + "proxyProtocol", tp.ProxyProtocol, "Trellis does not send the PROXY protocol" + removeIt},
	}
	if rb := tp.RetryBudget; rb != nil {
		rs = append(rs, refusal{p + "retryBudget.budgetInterval", rb.BudgetInterval, "Trellis's retry budget counts the " +
			"requests and retries of the last 10 seconds, a window that is not configurable" + removeIt})
	}
	if lb := tp.LoadBalancer; lb != nil {
		p := p + "loadBalancer."
		rs = append(rs,
			refusal{p + "consistentHash", lb.ConsistentHash, "Trellis does not support consistent hashing (session affinity) " +
				"yet; remove it, or use simple: ROUND_ROBIN or LEAST_REQUEST"},
			refusal{p + "localityLbSetting", lb.LocalityLbSetting, "Trellis does not support locality load balancing " +
				"(a one-host mesh has one locality)" + removeIt},
			refusal{p + "warmupDurationSecs", lb.WarmupDurationSecs, "Trellis does not support slow start yet" + removeIt},
			refusal{p + "warmup", lb.Warmup, "Trellis does not support slow start yet" + removeIt},
		)
	}
	if cp := tp.ConnectionPool; cp != nil && cp.TCP != nil {
		p := p + "connectionPool.tcp."
		rs = append(rs,
			refusal{p + "connectTimeout", cp.TCP.ConnectTimeout, "Trellis's sidecars have a fixed connect timeout" + removeIt},
			refusal{p + "tcpKeepalive", cp.TCP.TCPKeepalive, "Trellis does not support TCP keepalive settings yet" + removeIt},
			refusal{p + "maxConnectionDuration", cp.TCP.MaxConnectionDuration, "Trellis does not support maxConnectionDuration yet" + removeIt},
			refusal{p + "idleTimeout", cp.TCP.IdleTimeout, "Trellis's sidecars have fixed idle timeouts" + removeIt},
		)
	}
	if cp := tp.ConnectionPool; cp != nil && cp.HTTP != nil {
		p := p + "connectionPool.http."
		rs = append(rs,
			refusal{p + "maxRequestsPerConnection", cp.HTTP.MaxRequestsPerConnection, "Trellis's mesh connections are " +
				"multiplexed HTTP/2 and long-lived, so it has no meaning there: remove it"},
			refusal{p + "maxRetries", cp.HTTP.MaxRetries, "Trellis bounds retries with a budget per backend Service " +
				"(trafficPolicy.retryBudget) and a route's retry attempts" + removeIt},
			refusal{p + "idleTimeout", cp.HTTP.IdleTimeout, "Trellis's sidecars have fixed idle timeouts" + removeIt},
			refusal{p + "h2UpgradePolicy", cp.HTTP.H2UpgradePolicy, "Trellis's sidecars always speak HTTP/2 to each other" + removeIt},
			refusal{p + "useClientProtocol", cp.HTTP.UseClientProtocol, "Trellis's sidecars always speak HTTP/2 to each other, " +
				"and the app's own protocol to the app" + removeIt},
			refusal{p + "maxConcurrentStreams", cp.HTTP.MaxConcurrentStreams, "Trellis does not support maxConcurrentStreams yet" + removeIt},
		)
	}
	if od := tp.OutlierDetection; od != nil {
		p := p + "outlierDetection."
		rs = append(rs,
			refusal{p + "consecutiveErrors", od.ConsecutiveErrors, "Istio deprecated it: use consecutive5xxErrors"},
			refusal{p + "splitExternalLocalOriginErrors", od.SplitExternalLocalOriginErrors, "Trellis does not support it yet: " +
				"connection failures count with 5xx answers, as in Istio without it" + removeIt},
			refusal{p + "consecutiveLocalOriginFailures", od.ConsecutiveLocalOriginFailures, "Trellis does not support it yet " +
				"(it goes with splitExternalLocalOriginErrors)" + removeIt},
			refusal{p + "minHealthPercent", od.MinHealthPercent, "Trellis does not support it: its sidecars leave ejections " +
				"aside only when every endpoint is ejected" + removeIt},
		)
	}
	return rs
}

// checkSimple takes the simple load balancers Trellis has; field is
// where simple is written.
func checkSimple(field, simple string) error {
	switch simple {
	case "", catalog.LBUnspecified, catalog.LBRoundRobin, catalog.LBLeastRequest, catalog.LBLeastConn:
		return nil
	case "RANDOM", "PASSTHROUGH":
		return fmt.Errorf("%s %s is not supported: Trellis's default is power of two choices over peak-EWMA latency "+
			"(leave simple out, or write UNSPECIFIED); it also takes ROUND_ROBIN and LEAST_REQUEST (or LEAST_CONN)", field, simple)
	}
	return fmt.Errorf("%s %q: use UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST or LEAST_CONN", field, simple)
}

// check refuses limits below 1, as Istio's schema does, naming each field
// under p, and leaves out what sets nothing.
func (cp *drConnectionPool) check(p string) (*catalog.ConnectionPoolSettings, error) {
	out := &catalog.ConnectionPoolSettings{}
	if cp.TCP != nil {
		if err := atLeastOne(p+"tcp.maxConnections", cp.TCP.MaxConnections); err != nil {
			return nil, err
		}
		out.TCP = &cp.TCP.TCPSettings
	}
	if cp.HTTP != nil {
		for _, f := range []struct {
			name string
			v    *int32
		}{{"http2MaxRequests", cp.HTTP.HTTP2MaxRequests}, {"http1MaxPendingRequests", cp.HTTP.HTTP1MaxPendingRequests}} {
			if err := atLeastOne(p+"http."+f.name, f.v); err != nil {
				return nil, err
			}
		}
		out.HTTP = &cp.HTTP.HTTPSettings
	}
	return out, nil
}

func atLeastOne(field string, v *int32) error {
	if v != nil && *v < 1 {
		return fmt.Errorf("%s %d: must be at least 1 (Istio's schema); leave it out for no limit", field, *v)
	}
	return nil
}

// maxBaseEjection is the longest baseEjectionTime the proxy's config
// carries (milliseconds in a uint32).
const maxBaseEjection = math.MaxUint32 * time.Millisecond

// checkOutlierDetection checks the durations and the percentage, naming
// each field under p.
func checkOutlierDetection(p string, od *catalog.OutlierDetection) error {
	if od.Interval != "" {
		if _, err := catalog.ParseIstioDuration(od.Interval); err != nil {
			return fmt.Errorf("%sinterval %w", p, err)
		}
	}
	if od.BaseEjectionTime != "" {
		d, err := catalog.ParseIstioDuration(od.BaseEjectionTime)
		if err != nil {
			return fmt.Errorf("%sbaseEjectionTime %w", p, err)
		}
		if d > maxBaseEjection {
			return fmt.Errorf("%sbaseEjectionTime %q: at most %v", p, od.BaseEjectionTime, maxBaseEjection.Truncate(time.Hour))
		}
	}
	if pc := od.MaxEjectionPercent; pc < 0 || pc > 100 {
		return fmt.Errorf("%smaxEjectionPercent %d: write a percentage, 0 to 100", p, pc)
	}
	return nil
}

// checkDestinationRules fails each DestinationRule whose host names no
// Service of s, and each that names the same Service as another of its
// namespace: Istio keeps the older one's trafficPolicy, and manifests say
// nothing of age.
func checkDestinationRules(s *Set) []error {
	var errs []error
	first := map[[2]string]*catalog.DestinationRule{} // by the rule's namespace and its Service's key
	for _, dr := range s.DestinationRules() {
		ref := catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: dr.Namespace, Name: dr.Name}
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s: %s", s.Origin(ref), ref, fmt.Sprintf(format, args...)))
		}
		ns, name, err := catalog.DestinationHost(dr.Spec.Host, dr.Namespace)
		if err != nil {
			fail("spec.host %v", err) // checked when decoded; a Set built otherwise may hold anything
			continue
		}
		if s.Get(catalog.Ref{Kind: catalog.KindService, Namespace: ns, Name: name}) == nil {
			fail("spec.host %q: Service %s/%s does not exist; declare it, or name an existing Service", dr.Spec.Host, ns, name)
			continue
		}
		key := [2]string{dr.Namespace, ns + "/" + name}
		if other := first[key]; other != nil {
			otherRef := catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: other.Namespace, Name: other.Name}
			fail("spec.host %q: %s (%s) is for Service %s/%s too; Istio would keep the older one's trafficPolicy "+
				"and manifests do not say which is older: merge the two into one", dr.Spec.Host, otherRef, s.Origin(otherRef), ns, name)
			continue
		}
		first[key] = dr
	}
	return errs
}

// DecodeDestinationRule decodes one DestinationRule, as DecodeHTTPRoute:
// what Trellis does not apply is an error naming the field.
func DecodeDestinationRule(doc []byte) (*catalog.DestinationRule, error) {
	return decodeAs[*catalog.DestinationRule](doc, "a DestinationRule")
}
