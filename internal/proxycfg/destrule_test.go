package proxycfg

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// testRules are for snapshot()'s Services: alpha has a rule in its own
// namespace, with subsets, and one in the client's; listed has a mesh-wide one (a root
// namespace's); zero has none.
var testRules = mustParse(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: alpha-policy, namespace: db}
spec:
  host: alpha
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {http: {http2MaxRequests: 10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: alpha-client, namespace: client}
spec:
  host: alpha.db
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 50}
      http: {http2MaxRequests: 100, http1MaxPendingRequests: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: listed-mesh, namespace: istio-system}
spec:
  host: listed.db.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, baseEjectionTime: 1m, maxEjectionPercent: 50}
`)

// serviceOf finds namespace/name among a proxy's services.
func serviceOf(t *testing.T, svcs []*meshpb.Service, key string) *meshpb.Service {
	t.Helper()
	for _, s := range svcs {
		if ServiceKey(s) == key {
			return s
		}
	}
	t.Fatalf("no service %s among %d", key, len(svcs))
	return nil
}

// A client's own namespace's rule wins over the Service's namespace's;
// the Service's namespace's applies to its other clients; a root
// namespace's applies when neither has one; no rule leaves both fields
// unset.
func TestDestinationRuleLookup(t *testing.T) {
	snap := snapshot()
	r := Render(snap, "cluster.local")
	client, err := ForPod(snap.Pod("client", "client"), r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	db, err := ForPod(snap.Pod("db", "alpha-1"), r, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		got  *meshpb.Service
		lb   meshpb.LoadBalancing
		tp   *meshpb.TrafficPolicy
	}{
		{"the client's own rule", serviceOf(t, client.GetServices(), "db/alpha"), meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN,
			&meshpb.TrafficPolicy{Source: "client/alpha-client", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 50, MaxPending: proto.Uint32(10), MaxConnections: 50}}},
		{"the Service's namespace's rule, Istio's defaults filled in", serviceOf(t, db.GetServices(), "db/alpha"), meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST,
			&meshpb.TrafficPolicy{Source: "db/alpha-policy", OutlierDetection: &meshpb.OutlierDetection{Consecutive_5Xx: 5, BaseEjectionMs: 30000, MaxEjectionPercent: 10}}},
		{"a root namespace's rule", serviceOf(t, client.GetServices(), "db/listed"), meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA,
			&meshpb.TrafficPolicy{Source: "istio-system/listed-mesh", OutlierDetection: &meshpb.OutlierDetection{ConsecutiveGateway: 3, BaseEjectionMs: 60000, MaxEjectionPercent: 50}}},
		{"no rule", serviceOf(t, db.GetServices(), "db/zero"), meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA, nil},
	} {
		if tc.got.GetLoadBalancing() != tc.lb {
			t.Errorf("%s: load_balancing = %v, want %v", tc.name, tc.got.GetLoadBalancing(), tc.lb)
		}
		if got := tc.got.GetTrafficPolicy(); !proto.Equal(got, tc.tp) {
			t.Errorf("%s: traffic_policy = %v, want %v", tc.name, got, tc.tp)
		}
	}
	// The client's view holds a copy: the shared service keeps its
	// namespace's rule.
	if s := serviceOf(t, r.Services, "db/alpha"); s.GetTrafficPolicy().GetSource() != "db/alpha-policy" {
		t.Errorf("the rendered db/alpha carries %q, want db/alpha-policy", s.GetTrafficPolicy().GetSource())
	}
}

// Each service carries its rule's subsets, each with its effective
// policy: a field of the subset's own trafficPolicy replaces the rule's,
// the others are the rule's. A client whose own rule has no subsets sees
// none.
func TestDestinationRuleSubsets(t *testing.T) {
	snap := snapshot()
	r := Render(snap, "cluster.local")
	inherited := &meshpb.OutlierDetection{Consecutive_5Xx: 5, BaseEjectionMs: 30000, MaxEjectionPercent: 10}
	want := []*meshpb.Subset{
		{Name: "v1", Labels: map[string]string{"version": "v1"}, LoadBalancing: meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST,
			TrafficPolicy: &meshpb.TrafficPolicy{Source: "db/alpha-policy", OutlierDetection: inherited}},
		{Name: "v2", Labels: map[string]string{"version": "v2"}, LoadBalancing: meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN,
			TrafficPolicy: &meshpb.TrafficPolicy{Source: "db/alpha-policy", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 10},
				OutlierDetection: inherited}},
	}
	got := serviceOf(t, r.For("db").Services, "db/alpha").GetSubsets()
	if len(got) != len(want) {
		t.Fatalf("db/alpha's subsets = %v, want %v", got, want)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("subset %d = %v, want %v", i, got[i], want[i])
		}
	}
	if got := serviceOf(t, r.For("client").Services, "db/alpha").GetSubsets(); len(got) != 0 {
		t.Errorf("the client's db/alpha, under its own rule, has subsets %v, want none", got)
	}
	if got := serviceOf(t, r.For("db").Services, "db/zero").GetSubsets(); len(got) != 0 {
		t.Errorf("db/zero, without a rule, has subsets %v, want none", got)
	}
	// Route status sees the same subsets, and the rule to add others to.
	for _, rs := range RouteConfig(snap).Services {
		if rs.Namespace == "db" && rs.Name == "alpha" && (!slices.Equal(rs.Subsets, []string{"v1", "v2"}) || rs.Rule != "db/alpha-policy") {
			t.Errorf("RouteConfig's db/alpha has subsets %q of %q, want v1, v2 of db/alpha-policy", rs.Subsets, rs.Rule)
		}
	}
}

func TestSubsetPolicyMerge(t *testing.T) {
	lb := func(s string) *catalog.LoadBalancerSettings { return &catalog.LoadBalancerSettings{Simple: s} }
	od := &catalog.OutlierDetection{BaseEjectionTime: "1m"}
	cp := &catalog.ConnectionPoolSettings{}
	rb := &catalog.RetryBudget{Percent: proto.Float64(50)}
	rule := &catalog.TrafficPolicy{LoadBalancer: lb("ROUND_ROBIN"), OutlierDetection: od, RetryBudget: &catalog.RetryBudget{}}
	for _, tc := range []struct {
		name      string
		rule, own *catalog.TrafficPolicy
		want      *catalog.TrafficPolicy
	}{
		{"neither", nil, nil, nil},
		{"the rule's alone", rule, nil, rule},
		{"the subset's alone", nil, &catalog.TrafficPolicy{ConnectionPool: cp}, &catalog.TrafficPolicy{ConnectionPool: cp}},
		{"a field replaces the rule's, the others inherited", rule, &catalog.TrafficPolicy{LoadBalancer: lb("LEAST_REQUEST"), ConnectionPool: cp},
			&catalog.TrafficPolicy{LoadBalancer: lb("LEAST_REQUEST"), ConnectionPool: cp, OutlierDetection: od, RetryBudget: rule.RetryBudget}},
		{"a retryBudget replaces the rule's", rule, &catalog.TrafficPolicy{RetryBudget: rb},
			&catalog.TrafficPolicy{LoadBalancer: lb("ROUND_ROBIN"), OutlierDetection: od, RetryBudget: rb}},
		{"an empty own policy inherits all", rule, &catalog.TrafficPolicy{}, rule},
	} {
		got := subsetPolicy(tc.rule, tc.own)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: subsetPolicy() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestDestinationPolicyTranslation(t *testing.T) {
	n := func(v int32) *int32 { return &v }
	u := func(v uint32) *uint32 { return &v }
	pool := func(tcp, h2, pending *int32) *catalog.TrafficPolicy {
		return &catalog.TrafficPolicy{ConnectionPool: &catalog.ConnectionPoolSettings{TCP: &catalog.TCPSettings{MaxConnections: tcp},
			HTTP: &catalog.HTTPSettings{HTTP2MaxRequests: h2, HTTP1MaxPendingRequests: pending}}}
	}
	for _, tc := range []struct {
		name string
		spec *catalog.TrafficPolicy
		lb   meshpb.LoadBalancing
		want *meshpb.TrafficPolicy
	}{
		{"no trafficPolicy", nil, meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA, &meshpb.TrafficPolicy{Source: "ns/r"}},
		{"UNSPECIFIED", &catalog.TrafficPolicy{LoadBalancer: &catalog.LoadBalancerSettings{Simple: "UNSPECIFIED"}},
			meshpb.LoadBalancing_LOAD_BALANCING_P2C_PEAK_EWMA, &meshpb.TrafficPolicy{Source: "ns/r"}},
		{"LEAST_CONN", &catalog.TrafficPolicy{LoadBalancer: &catalog.LoadBalancerSettings{Simple: "LEAST_CONN"}},
			meshpb.LoadBalancing_LOAD_BALANCING_LEAST_REQUEST, &meshpb.TrafficPolicy{Source: "ns/r"}},
		{"maxConnections lower", pool(n(50), n(100), nil), 0,
			&meshpb.TrafficPolicy{Source: "ns/r", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 50, MaxConnections: 50}}},
		{"http2MaxRequests lower", pool(n(200), n(100), n(7)), 0,
			&meshpb.TrafficPolicy{Source: "ns/r", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 100, MaxPending: proto.Uint32(7), MaxConnections: 200}}},
		{"maxConnections alone", pool(n(2), nil, nil), 0,
			&meshpb.TrafficPolicy{Source: "ns/r", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 2, MaxConnections: 2}}},
		{"maxConnections below 1", pool(n(0), nil, nil), 0, &meshpb.TrafficPolicy{Source: "ns/r"}},
		{"http2MaxRequests alone", pool(nil, n(100), nil), 0,
			&meshpb.TrafficPolicy{Source: "ns/r", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 100}}},
		{"pending alone", pool(nil, nil, n(3)), 0,
			&meshpb.TrafficPolicy{Source: "ns/r", ConnectionPool: &meshpb.ConnectionPool{MaxPending: proto.Uint32(3)}}},
		{"an empty pool", pool(nil, nil, nil), 0, &meshpb.TrafficPolicy{Source: "ns/r"}},
		{"explicit zeros", &catalog.TrafficPolicy{OutlierDetection: &catalog.OutlierDetection{Consecutive5xxErrors: u(0),
			ConsecutiveGatewayErrors: u(0), Interval: "1s", BaseEjectionTime: "500ms", MaxEjectionPercent: 0}}, 0,
			&meshpb.TrafficPolicy{Source: "ns/r", OutlierDetection: &meshpb.OutlierDetection{BaseEjectionMs: 500, MaxEjectionPercent: 10}}},
		{"retryBudget, defaults filled in", &catalog.TrafficPolicy{RetryBudget: &catalog.RetryBudget{}}, 0,
			&meshpb.TrafficPolicy{Source: "ns/r", RetryBudget: &meshpb.RetryBudget{Percent: 20, MinRetriesPerSecond: 10}}},
		{"retryBudget set", &catalog.TrafficPolicy{RetryBudget: &catalog.RetryBudget{Percent: proto.Float64(2.5), MinRetryConcurrency: u(3)}}, 0,
			&meshpb.TrafficPolicy{Source: "ns/r", RetryBudget: &meshpb.RetryBudget{Percent: 2.5, MinRetriesPerSecond: 3}}},
		{"retryBudget of none", &catalog.TrafficPolicy{RetryBudget: &catalog.RetryBudget{Percent: proto.Float64(0), MinRetryConcurrency: u(0)}}, 0,
			&meshpb.TrafficPolicy{Source: "ns/r", RetryBudget: &meshpb.RetryBudget{}}},
		{"all set", &catalog.TrafficPolicy{OutlierDetection: &catalog.OutlierDetection{Consecutive5xxErrors: u(7),
			ConsecutiveGatewayErrors: u(2), BaseEjectionTime: "2m", MaxEjectionPercent: 100}}, 0,
			&meshpb.TrafficPolicy{Source: "ns/r", OutlierDetection: &meshpb.OutlierDetection{Consecutive_5Xx: 7, ConsecutiveGateway: 2, BaseEjectionMs: 120000, MaxEjectionPercent: 100}}},
	} {
		lb, tp := DestinationPolicy(&catalog.DestinationRule{Meta: catalog.Meta{Namespace: "ns", Name: "r"},
			Spec: catalog.DestinationRuleSpec{Host: "s", TrafficPolicy: tc.spec}})
		if lb != tc.lb {
			t.Errorf("%s: load balancing %v, want %v", tc.name, lb, tc.lb)
		}
		if !proto.Equal(tp, tc.want) {
			t.Errorf("%s: traffic_policy = %v, want %v", tc.name, tp, tc.want)
		}
	}
}

// A rule added, changed or removed changes the hash of the service as the
// namespaces it applies to see it, and only theirs, so an incremental
// update re-sends that service to their proxies and to no one else's.
func TestDestinationRuleChangesReachUpdates(t *testing.T) {
	hashes := func(snap *catalog.Snapshot) (client, db string) {
		r := Render(snap, "cluster.local")
		return r.For("client").Hashes["db/alpha"], r.For("db").Hashes["db/alpha"]
	}
	base := snapshot()
	client0, db0 := hashes(base)
	if client0 == db0 {
		t.Fatal("the client's own rule did not give it another db/alpha")
	}

	changed := snapshot()
	c := *changed.DestinationRules[0] // client/alpha-client
	c.Spec.TrafficPolicy = &catalog.TrafficPolicy{LoadBalancer: &catalog.LoadBalancerSettings{Simple: catalog.LBLeastRequest}}
	changed.DestinationRules[0] = &c
	if client1, db1 := hashes(changed); client1 == client0 || db1 != db0 {
		t.Errorf("the client's rule changed: client hash %s -> %s (want a change), db hash %s -> %s (want none)", client0, client1, db0, db1)
	}

	producer := snapshot()
	p := *producer.DestinationRules[1] // db/alpha-policy
	p.Spec.TrafficPolicy = nil
	producer.DestinationRules[1] = &p
	if client1, db1 := hashes(producer); client1 != client0 || db1 == db0 {
		t.Errorf("the Service's rule changed: client hash %s -> %s (want none: its own rule wins), db hash %s -> %s (want a change)", client0, client1, db0, db1)
	}

	removed := snapshot()
	removed.DestinationRules = removed.DestinationRules[1:]
	if client1, db1 := hashes(removed); client1 != db0 || db1 != db0 {
		t.Errorf("the client's rule removed: client hash %s, db hash %s; want both the Service's namespace's %s", client1, db1, db0)
	}

	none := snapshot()
	none.DestinationRules = nil
	if _, db1 := hashes(none); db1 == db0 {
		t.Error("every rule removed: db/alpha's hash did not change")
	}
}

// Of two rules of one namespace for one Service, which the Kubernetes API
// server allows, the older applies, as in Istio, whatever their names.
func TestOlderDestinationRuleWins(t *testing.T) {
	snap := snapshot()
	policy := testRules.Get(catalog.Ref{Kind: catalog.KindDestinationRule, Namespace: "db", Name: "alpha-policy"}).(*catalog.DestinationRule)
	older, newer := *policy, *policy
	older.Name, older.CreationTimestamp = "z-older", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	newer.Name, newer.CreationTimestamp = "a-newer", older.CreationTimestamp.Add(time.Hour)
	snap.DestinationRules = []*catalog.DestinationRule{&newer, &older}
	if got := indexRules(snap)["db"]["db/alpha"]; got != &older {
		t.Errorf("kept %s, want the older z-older", got.Name)
	}
}
