package catalog

import (
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestDestinationHost(t *testing.T) {
	for _, tc := range []struct{ host, ns, name, err string }{
		{host: "reviews", ns: "shop", name: "reviews"},
		{host: "reviews.db", ns: "db", name: "reviews"},
		{host: "reviews.db.svc.cluster.local", ns: "db", name: "reviews"},
		{host: "", err: "is required: name the Service, as reviews, reviews.shop or reviews.shop.svc.cluster.local"},
		{host: "*.db.svc.cluster.local", err: "wildcard hosts are not supported yet"},
		{host: "reviews..db", err: `"reviews..db" is not a host name`},
		{host: "reviews.db.svc", err: `"reviews.db.svc" names no Service`},
		{host: "api.example.com", err: "hosts outside the mesh are not supported"},
		{host: "db.svc.cluster.local", err: `"db.svc.cluster.local" names no Service`},
	} {
		ns, name, err := DestinationHost(tc.host, "shop")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("DestinationHost(%q) error = %v, want one containing %q", tc.host, err, tc.err)
			}
			continue
		}
		if err != nil || ns != tc.ns || name != tc.name {
			t.Errorf("DestinationHost(%q) = %s/%s, %v; want %s/%s", tc.host, ns, name, err, tc.ns, tc.name)
		}
	}
}

func TestParseIstioDuration(t *testing.T) {
	for s, want := range map[string]time.Duration{"30s": 30 * time.Second, "1m": time.Minute, "500ms": 500 * time.Millisecond,
		"1.5s": 1500 * time.Millisecond, "1h30m": 90 * time.Minute, "1ms": time.Millisecond} {
		if d, err := ParseIstioDuration(s); err != nil || d != want {
			t.Errorf("ParseIstioDuration(%q) = %v, %v; want %v", s, d, err, want)
		}
	}
	for s, want := range map[string]string{"30": "is not a duration", "": "is not a duration", "-1s": "less than 1ms",
		"0s": "less than 1ms", "500us": "less than 1ms", "1.5ms": "not whole milliseconds"} {
		if _, err := ParseIstioDuration(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseIstioDuration(%q) = %v, want an error containing %q", s, err, want)
		}
	}
}

// A spec as Istio users write it decodes strictly into the supported
// subset; the pointers tell an explicit 0 from unset.
func TestDestinationRuleSpecDecodes(t *testing.T) {
	const spec = `
host: reviews.shop.svc.cluster.local
trafficPolicy:
  loadBalancer: {simple: LEAST_REQUEST}
  connectionPool:
    tcp: {maxConnections: 100}
    http: {http2MaxRequests: 50, http1MaxPendingRequests: 10}
  outlierDetection: {consecutive5xxErrors: 0, interval: 10s, baseEjectionTime: 1m, maxEjectionPercent: 50}
`
	var s DestinationRuleSpec
	if err := yaml.UnmarshalStrict([]byte(spec), &s); err != nil {
		t.Fatal(err)
	}
	tp := s.TrafficPolicy
	if tp.LoadBalancer.Simple != LBLeastRequest || *tp.ConnectionPool.TCP.MaxConnections != 100 ||
		*tp.ConnectionPool.HTTP.HTTP2MaxRequests != 50 || *tp.ConnectionPool.HTTP.HTTP1MaxPendingRequests != 10 {
		t.Errorf("trafficPolicy = %+v", tp)
	}
	od := tp.OutlierDetection
	if od.Consecutive5xxErrors == nil || *od.Consecutive5xxErrors != 0 || od.ConsecutiveGatewayErrors != nil ||
		od.BaseEjectionTime != "1m" || od.MaxEjectionPercent != 50 {
		t.Errorf("outlierDetection = %+v, want 5xx 0 (set), gateway unset", od)
	}
	if err := yaml.UnmarshalStrict([]byte("host: a\nexportTo: [.]\n"), &s); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("a field outside the subset: %v, want an unknown field error", err)
	}
}
