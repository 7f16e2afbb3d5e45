package manifest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// dr is a DestinationRule named r in shop with spec (indented two spaces).
func dr(apiVersion, spec string) string {
	return "---\napiVersion: " + apiVersion + "\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\nspec:\n" + spec + "\n"
}

const istioV1 = "networking.istio.io/v1"

func parseAndValidate(yaml string) (*Set, error) {
	set, err := Parse([]Source{{Name: "mesh.yaml", Data: []byte(yaml)}})
	if err == nil {
		_, err = Validate(set)
	}
	return set, err
}

func TestParseDestinationRule(t *testing.T) {
	set, err := parseAndValidate(reviewsMesh + dr(istioV1, `  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http2MaxRequests: 1000, http1MaxPendingRequests: 10}
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 0
      interval: 10s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
    retryBudget: {percent: 12.5, minRetryConcurrency: 3}`))
	if err != nil {
		t.Fatalf("Parse+Validate() error = %v", err)
	}
	drs := set.DestinationRules()
	if len(drs) != 1 || drs[0].Namespace != "shop" || drs[0].Name != "r" || drs[0].Spec.Host != "reviews" {
		t.Fatalf("DestinationRules() = %+v, want shop/r for reviews", drs)
	}
	tp := drs[0].Spec.TrafficPolicy
	if tp.LoadBalancer.Simple != "LEAST_CONN" || *tp.ConnectionPool.TCP.MaxConnections != 100 ||
		*tp.ConnectionPool.HTTP.HTTP2MaxRequests != 1000 || *tp.ConnectionPool.HTTP.HTTP1MaxPendingRequests != 10 {
		t.Errorf("trafficPolicy = %+v", tp)
	}
	od := tp.OutlierDetection
	if *od.Consecutive5xxErrors != 3 || od.ConsecutiveGatewayErrors == nil || *od.ConsecutiveGatewayErrors != 0 ||
		od.Interval != "10s" || od.BaseEjectionTime != "1m" || od.MaxEjectionPercent != 50 {
		t.Errorf("outlierDetection = %+v", od)
	}
	if rb := tp.RetryBudget; rb == nil || *rb.Percent != 12.5 || *rb.MinRetryConcurrency != 3 {
		t.Errorf("retryBudget = %+v, want 12.5 %% and 3", rb)
	}
}

// Subsets are kept with their labels and traffic policies; a subset
// without a trafficPolicy has none of its own (it inherits the rule's
// when rendered).
func TestParseDestinationRuleSubsets(t *testing.T) {
	set, err := parseAndValidate(reviewsMesh + dr(istioV1, `  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - name: v1
    labels: {version: v1, app.kubernetes.io/part-of: shop}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
      outlierDetection: {consecutive5xxErrors: 2}
      retryBudget: {percent: 0}`))
	if err != nil {
		t.Fatalf("Parse+Validate() error = %v", err)
	}
	subs := set.DestinationRules()[0].Spec.Subsets
	if len(subs) != 2 {
		t.Fatalf("Subsets = %+v, want v1 and v2", subs)
	}
	if v1 := subs[0]; v1.Name != "v1" || v1.Labels["version"] != "v1" || v1.Labels["app.kubernetes.io/part-of"] != "shop" || v1.TrafficPolicy != nil {
		t.Errorf("Subsets[0] = %+v, want v1 with its two labels and no trafficPolicy", v1)
	}
	v2 := subs[1]
	if v2.Name != "v2" || v2.Labels["version"] != "v2" || v2.TrafficPolicy == nil || v2.TrafficPolicy.LoadBalancer.Simple != "LEAST_REQUEST" ||
		*v2.TrafficPolicy.OutlierDetection.Consecutive5xxErrors != 2 || v2.TrafficPolicy.ConnectionPool != nil ||
		v2.TrafficPolicy.RetryBudget == nil || *v2.TrafficPolicy.RetryBudget.Percent != 0 || v2.TrafficPolicy.RetryBudget.MinRetryConcurrency != nil {
		t.Errorf("Subsets[1] = %+v, want v2 with its loadBalancer, outlierDetection and retryBudget", v2)
	}
	// The most subsets a rule may have load.
	many := "  host: reviews\n  subsets:\n"
	for i := range catalog.MaxSubsets {
		many += fmt.Sprintf("  - {name: s%d, labels: {n: %q}}\n", i, fmt.Sprint(i))
	}
	if _, err := parseAndValidate(reviewsMesh + dr(istioV1, many)); err != nil {
		t.Errorf("%d subsets: error = %v, want them loaded", catalog.MaxSubsets, err)
	}
}

// Istio's older versions read as the same object; Istio's defaults
// written out (exportTo "*", false, 0) and a status from `kubectl get -o
// yaml` are accepted; every form of the host names the Service.
func TestDestinationRuleVersionsAndHosts(t *testing.T) {
	doc := reviewsMesh + `---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: short, namespace: shop}
spec:
  host: reviews
  exportTo: ["*"]
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 0}}
    outlierDetection: {splitExternalLocalOriginErrors: false}
status: {}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: dotted, namespace: shop}
spec: {host: reviews-v1.shop}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: full, namespace: shop}
spec: {host: reviews-v2.shop.svc.cluster.local}
`
	set, err := parseAndValidate(doc)
	if err != nil {
		t.Fatalf("Parse+Validate() error = %v", err)
	}
	var names []string
	for _, d := range set.DestinationRules() {
		names = append(names, d.Name)
	}
	if got := strings.Join(names, ","); got != "dotted,full,short" {
		t.Errorf("DestinationRules() = %s, want dotted,full,short", got)
	}
}

// Every field Trellis does not apply is refused by its path, with the
// reason; values Istio refuses are refused naming the field.
func TestDestinationRuleRefusals(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		// Subsets: as Istio validates them, and their trafficPolicy as the rule's.
		{"  host: reviews\n  subsets: [{labels: {version: v1}}]", "spec.subsets[0].name is required"},
		{"  host: reviews\n  subsets: [{name: V1}]", `spec.subsets[0].name "V1": a lowercase RFC 1123 label`},
		{"  host: reviews\n  subsets: [{name: v1}, {name: v2}, {name: v1}]",
			`spec.subsets[2].name "v1": spec.subsets[0] has the same name; give each subset a name of its own`},
		{"  host: reviews\n  subsets: [{name: v1, labels: {'bad key': v1}}]", `spec.subsets[0].labels: key "bad key": name part must consist of`},
		{"  host: reviews\n  subsets: [{name: v1, labels: {version: 'v 1'}}]", `spec.subsets[0].labels: value "v 1" of version: a valid label must be`},
		{"  host: reviews\n  subsets: [{name: v1}, {name: v2, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}]",
			"spec.subsets[1].trafficPolicy.tls: Trellis's sidecars choose TLS themselves"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}}]",
			"spec.subsets[0].trafficPolicy.loadBalancer.consistentHash: Trellis does not support consistent hashing"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]",
			"spec.subsets[0].trafficPolicy.loadBalancer.simple RANDOM is not supported"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {connectionPool: {tcp: {maxConnections: 0}}}}]",
			"spec.subsets[0].trafficPolicy.connectionPool.tcp.maxConnections 0: must be at least 1"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}]",
			"spec.subsets[0].trafficPolicy.outlierDetection.maxEjectionPercent 101: write a percentage"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {outlierDetection: {minHealthPercent: 50}}}]",
			"spec.subsets[0].trafficPolicy.outlierDetection.minHealthPercent: "},
		{"  host: reviews\n  subsets: [{name: v1, tls: {}}]", `unknown field "tls"`},
		{"  host: reviews\n  subsets: [" + strings.Repeat("{name: a},", catalog.MaxSubsets) + "{name: b}]",
			"spec.subsets: 65 subsets, more than the 64 Trellis takes in one DestinationRule"},
		{"  host: reviews\n  exportTo: [.]", "spec.exportTo: Trellis does not support exportTo on DestinationRules yet"},
		{"  host: reviews\n  workloadSelector: {matchLabels: {app: a}}", "spec.workloadSelector: "},
		{"  host: reviews\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}", "spec.trafficPolicy.tls: Trellis's sidecars choose TLS themselves"},
		{"  host: reviews\n  trafficPolicy: {portLevelSettings: [{port: {number: 9080}}]}", "spec.trafficPolicy.portLevelSettings: "},
		{"  host: reviews\n  trafficPolicy: {tunnel: {protocol: CONNECT}}", "spec.trafficPolicy.tunnel: "},
		{"  host: reviews\n  trafficPolicy: {proxyProtocol: {version: V1}}", "spec.trafficPolicy.proxyProtocol: "},
		{"  host: reviews\n  trafficPolicy: {retryBudget: {percent: 20, budgetInterval: 5s}}",
			"spec.trafficPolicy.retryBudget.budgetInterval: Trellis's retry budget counts the requests and retries of the last 10 seconds"},
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
			"spec.trafficPolicy.loadBalancer.consistentHash: Trellis does not support consistent hashing"},
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}}",
			"spec.trafficPolicy.loadBalancer.localityLbSetting: "},
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {warmupDurationSecs: 10s}}", "spec.trafficPolicy.loadBalancer.warmupDurationSecs: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 1s}}}", "spec.trafficPolicy.connectionPool.tcp.connectTimeout: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 7200s}}}}", "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 1h}}}", "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 1h}}}", "spec.trafficPolicy.connectionPool.tcp.idleTimeout: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}",
			"spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: Trellis's mesh connections are multiplexed HTTP/2 and long-lived, so it has no meaning there: remove it"},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {maxRetries: 3}}}", "spec.trafficPolicy.connectionPool.http.maxRetries: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {idleTimeout: 1m}}}", "spec.trafficPolicy.connectionPool.http.idleTimeout: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}", "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}", "spec.trafficPolicy.connectionPool.http.useClientProtocol: "},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 10}}}", "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams: "},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {consecutiveErrors: 5}}",
			"spec.trafficPolicy.outlierDetection.consecutiveErrors: Istio deprecated it: use consecutive5xxErrors"},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {splitExternalLocalOriginErrors: true}}",
			"spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors: "},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 2}}",
			"spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: "},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {minHealthPercent: 50}}", "spec.trafficPolicy.outlierDetection.minHealthPercent: "},
		// Values.
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}",
			"spec.trafficPolicy.loadBalancer.simple RANDOM is not supported: Trellis's default is power of two choices over peak-EWMA latency (leave simple out, or write UNSPECIFIED); it also takes ROUND_ROBIN and LEAST_REQUEST (or LEAST_CONN)"},
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}", "spec.trafficPolicy.loadBalancer.simple PASSTHROUGH is not supported"},
		{"  host: reviews\n  trafficPolicy: {loadBalancer: {simple: round_robin}}",
			`spec.trafficPolicy.loadBalancer.simple "round_robin": use UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST or LEAST_CONN`},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 0}}}",
			"spec.trafficPolicy.connectionPool.tcp.maxConnections 0: must be at least 1 (Istio's schema); leave it out for no limit"},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}", "spec.trafficPolicy.connectionPool.http.http2MaxRequests -1: must be at least 1"},
		{"  host: reviews\n  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 0}}}", "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests 0: must be at least 1"},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {baseEjectionTime: \"30\"}}",
			`spec.trafficPolicy.outlierDetection.baseEjectionTime "30" is not a duration: write it as 30s, 1m or 500ms`},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {baseEjectionTime: 0s}}", `spec.trafficPolicy.outlierDetection.baseEjectionTime "0s" is less than 1ms`},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {baseEjectionTime: 2000h}}", `spec.trafficPolicy.outlierDetection.baseEjectionTime "2000h": at most 1193h0m0s`},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {interval: \"10\"}}", `spec.trafficPolicy.outlierDetection.interval "10" is not a duration`},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}", "spec.trafficPolicy.outlierDetection.maxEjectionPercent 101: write a percentage, 0 to 100"},
		{"  host: reviews\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: -1}}", "consecutive5xxErrors of type uint32"},
		{"  host: reviews\n  trafficPolicy: {retryBudget: {percent: 150}}",
			"spec.trafficPolicy.retryBudget.percent 150: write a percentage of the requests, 0 to 100 (leave it out for 20)"},
		{"  host: reviews\n  trafficPolicy: {retryBudget: {percent: -5}}", "spec.trafficPolicy.retryBudget.percent -5: write a percentage"},
		{"  host: reviews\n  subsets: [{name: v1, trafficPolicy: {retryBudget: {percent: 100.5}}}]",
			"spec.subsets[0].trafficPolicy.retryBudget.percent 100.5: write a percentage"},
		{"  host: reviews\n  trafficPolicy: {retryBudget: {minRetryConcurrency: -1}}", "minRetryConcurrency of type uint32"},
		{"  host: reviews\n  trafficPolicy: {retryBudget: {percent: twenty}}", "percent of type float64"},
		{"  host: reviews\n  trafficPolicy: {loadBalancers: {simple: ROUND_ROBIN}}",
			`mesh.yaml: DestinationRule shop/r: unknown field "loadBalancers" (check the field names against the DestinationRule (networking.istio.io/v1) API)`},
		{"  host: '*.shop.svc.cluster.local'", "spec.host \"*.shop.svc.cluster.local\": wildcard hosts are not supported yet"},
		{"  trafficPolicy: {}", "spec.host is required: name the Service, as reviews, reviews.shop or reviews.shop.svc.cluster.local"},
		{"  host: reviews.shop.svc", `spec.host "reviews.shop.svc" names no Service`},
	} {
		_, err := parseAndValidate(reviewsMesh + dr(istioV1, tc.spec))
		want := "mesh.yaml: DestinationRule shop/r: " + tc.want
		if !strings.HasPrefix(tc.want, "spec.") {
			want = tc.want
		}
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("spec\n%s\nerror = %v, want one line containing %q", tc.spec, err, want)
		}
	}
}

// A host must name a declared Service; two rules of one namespace for one
// Service are refused, naming both, whatever forms their hosts take.
func TestDestinationRuleHostChecks(t *testing.T) {
	_, err := parseAndValidate(reviewsMesh + dr(istioV1, "  host: ratings"))
	want := `mesh.yaml: DestinationRule shop/r: spec.host "ratings": Service shop/ratings does not exist; declare it, or name an existing Service`
	if err == nil || err.Error() != want {
		t.Errorf("unknown host: error = %v, want %q", err, want)
	}
	_, err = parseAndValidate(reviewsMesh + dr(istioV1, "  host: reviews.elsewhere"))
	if err == nil || !strings.Contains(err.Error(), "Service elsewhere/reviews does not exist") {
		t.Errorf("host in another namespace: error = %v, want it to name elsewhere/reviews", err)
	}
	other := "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a, namespace: shop}\nspec: {host: reviews.shop.svc.cluster.local}\n"
	_, err = parseAndValidate(reviewsMesh + other + dr(istioV1, "  host: reviews"))
	want = `mesh.yaml: DestinationRule shop/r: spec.host "reviews": DestinationRule shop/a (mesh.yaml) is for Service shop/reviews too; ` +
		"Istio would keep the older one's trafficPolicy and manifests do not say which is older: merge the two into one"
	if err == nil || err.Error() != want {
		t.Errorf("two rules for one Service: error = %v, want %q", err, want)
	}
	// Another namespace's rule for the same Service is its clients' own.
	client := "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a, namespace: web}\nspec: {host: reviews.shop}\n"
	set, err := parseAndValidate(reviewsMesh + client + dr(istioV1, "  host: reviews"))
	if err != nil || len(set.DestinationRules()) != 2 {
		t.Errorf("rules of two namespaces for one Service: %v, want both loaded", err)
	}
	if r := set.Get(catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: "web", Name: "a"}); r == nil {
		t.Error("web/a was not kept")
	}
}
