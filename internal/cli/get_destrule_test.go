package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

// ruleFixture is what a mesh with a rule of every shape answers.
func ruleFixture() []localmesh.DestinationRuleStatus {
	n := func(v int32) *int32 { return &v }
	u := func(v uint32) *uint32 { return &v }
	created := time.Now().Add(-5 * time.Minute)
	half := 12.5
	return []localmesh.DestinationRuleStatus{
		{Namespace: "shop", Name: "reviews", Created: created, Spec: catalog.DestinationRuleSpec{Host: "reviews",
			TrafficPolicy: &catalog.TrafficPolicy{
				LoadBalancer:     &catalog.LoadBalancerSettings{Simple: catalog.LBLeastConn},
				ConnectionPool:   &catalog.ConnectionPoolSettings{HTTP: &catalog.HTTPSettings{HTTP2MaxRequests: n(100), HTTP1MaxPendingRequests: n(10)}},
				OutlierDetection: &catalog.OutlierDetection{},
			}}},
		{Namespace: "shop", Name: "ratings", Created: created, Spec: catalog.DestinationRuleSpec{Host: "ratings.shop.svc.cluster.local",
			TrafficPolicy: &catalog.TrafficPolicy{
				LoadBalancer:     &catalog.LoadBalancerSettings{Simple: catalog.LBRoundRobin},
				ConnectionPool:   &catalog.ConnectionPoolSettings{TCP: &catalog.TCPSettings{MaxConnections: n(1)}},
				OutlierDetection: &catalog.OutlierDetection{Consecutive5xxErrors: u(0), ConsecutiveGatewayErrors: u(3), BaseEjectionTime: "1m", MaxEjectionPercent: 50},
				RetryBudget:      &catalog.RetryBudget{Percent: &half, MinRetryConcurrency: u(0)},
			},
			Subsets: []catalog.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}}}},
		{Namespace: "shop", Name: "bare", Created: created, Spec: catalog.DestinationRuleSpec{Host: "details"}},
		{Namespace: "web", Name: "off", Created: created, Spec: catalog.DestinationRuleSpec{Host: "reviews.shop",
			TrafficPolicy: &catalog.TrafficPolicy{OutlierDetection: &catalog.OutlierDetection{Consecutive5xxErrors: u(0), BaseEjectionTime: "500ms"}}}},
	}
}

// serveRules answers GET /v1/destinationrules on a mesh socket in a new
// state directory, as a running mesh does.
func serveRules(t *testing.T, drs []localmesh.DestinationRuleStatus) string {
	return serveAPI(t, "GET /v1/destinationrules", drs)
}

func TestGetDestinationRulesTable(t *testing.T) {
	dir := serveRules(t, ruleFixture())
	for _, tc := range []struct {
		name string
		args []string
		want []string // rows, columns separated by runs of spaces
	}{
		{"a namespace's", []string{"destinationrules", "-n", "shop"}, []string{
			"NAME HOST LOAD-BALANCER CONNECTION-POOL OUTLIER-DETECTION RETRY-BUDGET AGE",
			"reviews reviews LEAST_REQUEST max 100 requests, 10 waiting 5×5xx, 30s, 10% 20% + 10/s (default) 5m",
			"ratings ratings.shop.svc.cluster.local ROUND_ROBIN max 1 request, 1 TCP connection 3×gateway, 1m, 50% 12.5% + 0/s 5m",
			"bare details P2C_PEAK_EWMA no limit 5×5xx, 10s, 100% (default) 20% + 10/s (default) 5m",
		}},
		{"one by name, short alias", []string{"dr", "ratings", "-n", "shop"}, []string{
			"NAME HOST LOAD-BALANCER CONNECTION-POOL OUTLIER-DETECTION RETRY-BUDGET AGE",
			"ratings ratings.shop.svc.cluster.local ROUND_ROBIN max 1 request, 1 TCP connection 3×gateway, 1m, 50% 12.5% + 0/s 5m",
		}},
		{"every namespace, wide", []string{"destinationrule", "-A", "-o", "wide"}, []string{
			"NAMESPACE NAME HOST LOAD-BALANCER CONNECTION-POOL OUTLIER-DETECTION RETRY-BUDGET AGE SERVICE SUBSETS",
			"shop reviews reviews LEAST_REQUEST max 100 requests, 10 waiting 5×5xx, 30s, 10% 20% + 10/s (default) 5m shop/reviews <none>",
			"shop ratings ratings.shop.svc.cluster.local ROUND_ROBIN max 1 request, 1 TCP connection 3×gateway, 1m, 50% 12.5% + 0/s 5m shop/ratings v1,v2",
			"shop bare details P2C_PEAK_EWMA no limit 5×5xx, 10s, 100% (default) 20% + 10/s (default) 5m shop/details <none>",
			"web off reviews.shop P2C_PEAK_EWMA no limit off 20% + 10/s (default) 5m shop/reviews <none>",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkTable(t, dir, tc.args, tc.want) })
	}
}

// -o json prints the rules in Istio's field names; an empty result says
// so; on Kubernetes the command says it reads one-host meshes only.
func TestGetDestinationRulesJSONEmptyAndKubernetes(t *testing.T) {
	dir := serveRules(t, ruleFixture())
	out, _, err := runGet(t, dir, "destinationrules", "-n", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in\n%s", err, out)
	}
	if len(got) != 1 || got[0]["name"] != "off" || !strings.Contains(out, `"consecutive5xxErrors": 0`) || !strings.Contains(out, `"baseEjectionTime": "500ms"`) {
		t.Errorf("get destinationrules -n web -o json = %s, want web/off in Istio's field names, its explicit 0 kept", out)
	}
	_, stderr, err := runGet(t, dir, "dr", "-n", "db")
	if err != nil || !strings.Contains(stderr, "No destinationrules found in db namespace.") {
		t.Errorf("get dr -n db: %v, stderr %q; want it to say none is found", err, stderr)
	}
}
