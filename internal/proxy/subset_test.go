package proxy

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// subsetRoutes send alpha's requests by x-version: to subset v2, to v3
// (which selects no endpoint) or to v9 (which alpha's rule lacks), and
// the rest half to v1, half to v2.
const subsetRoutes = `
kind: VirtualService
metadata: {name: alpha, namespace: db}
spec:
  hosts: [alpha]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: alpha, subset: v2}}]
  - match: [{headers: {x-version: {exact: v3}}}]
    route: [{destination: {host: alpha, subset: v3}}]
  - match: [{headers: {x-version: {exact: v9}}}]
    route: [{destination: {host: alpha, subset: v9}}]
  - route:
    - {destination: {host: alpha, subset: v1}, weight: 50}
    - {destination: {host: alpha, subset: v2}, weight: 50}
`

// newSubsetMesh is four apps behind the Service alpha, alpha-0 and
// alpha-1 labelled version v1, alpha-2 and alpha-3 v2, with subsets v1,
// v2 (with a connection pool, so its requests take net/http's path) and
// v3 (no endpoint), and subsetRoutes.
func newSubsetMesh(t *testing.T) *testMesh {
	t.Helper()
	m := newTestMesh(t, 4)
	for i, e := range m.endpoints {
		e.Labels = map[string]string{"app": "alpha", "version": []string{"v1", "v2"}[i/2]}
	}
	m.outbound.Update(subsetConfig(t, m))
	return m
}

func subsetConfig(t *testing.T, m *testMesh) *meshpb.ProxyConfig {
	svc := dbService("alpha", vip.Addr().String(), meshpb.Protocol_PROTOCOL_HTTP, m.endpoints...)
	svc.TrafficPolicy = &meshpb.TrafficPolicy{Source: "db/alpha"}
	svc.Subsets = []*meshpb.Subset{
		{Name: "v1", Labels: map[string]string{"version": "v1"}},
		{Name: "v2", Labels: map[string]string{"version": "v2"}, LoadBalancing: meshpb.LoadBalancing_LOAD_BALANCING_ROUND_ROBIN,
			TrafficPolicy: &meshpb.TrafficPolicy{Source: "db/alpha", ConnectionPool: &meshpb.ConnectionPool{MaxRequests: 100}}},
		{Name: "v3", Labels: map[string]string{"version": "v3"}},
	}
	return &meshpb.ProxyConfig{Version: "subsets",
		Workload: &meshpb.Workload{Namespace: "web", Name: "frontend", Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{svc}, Routes: routesFrom(t, subsetRoutes)}
}

// Over real sockets, HTTP/1.1 and h2c: requests a route sends to subset
// v2 reach only v2's endpoints; a 50/50 split between v1 and v2 lands
// within ±4 points; a subset without endpoints is "no healthy upstream"
// (503 UH); a subset the rule lacks gets 500; and a config update keeps a
// subset's balancer, as a service port's.
func TestRoutesToSubsets(t *testing.T) {
	m := newSubsetMesh(t)
	h1 := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 30 * time.Second}
	t.Cleanup(h1.CloseIdleConnections)
	h2c, _ := oneH2CConnection(t)
	send := func(c *http.Client, version string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/", nil)
		if version != "" {
			req.Header.Set("X-Version", version)
		}
		return do(t, c, req)
	}
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", h1}, {"h2c", h2c}} {
		t.Run(c.name, func(t *testing.T) {
			v2 := map[string]int{}
			for range 200 {
				_, body := send(c.client, "v2")
				v2[body]++
			}
			if v2["alpha-2"]+v2["alpha-3"] != 200 || v2["alpha-2"] == 0 || v2["alpha-3"] == 0 {
				t.Errorf("subset v2's requests went to %v, want all to alpha-2 and alpha-3 (version v2), both", v2)
			}
			const n = 2000
			split := map[string]int{}
			for range n {
				_, body := send(c.client, "")
				split[body]++
			}
			v1n, v2n := split["alpha-0"]+split["alpha-1"], split["alpha-2"]+split["alpha-3"]
			if v1n+v2n != n || v1n < n*46/100 || v1n > n*54/100 {
				t.Errorf("the 50/50 split sent %d to v1 and %d to v2 of %d (all: %v), want 50 %% ± 4 points", v1n, v2n, n, split)
			}
			if resp, body := send(c.client, "v3"); resp.StatusCode != 503 || resp.Header.Get(flagsHeader) != "UH" || !strings.Contains(body, "subset v3") {
				t.Errorf("subset v3 (no endpoint): %d %q flags %q, want 503 UH naming the subset", resp.StatusCode, body, resp.Header.Get(flagsHeader))
			}
			if resp, _ := send(c.client, "v9"); resp.StatusCode != 500 {
				t.Errorf("subset v9 (not in the rule): %d, want 500", resp.StatusCode)
			}
		})
	}
	before := m.outbound.routes.Load().byService[svcPort{"db", "alpha", 80, "v2"}]
	m.outbound.Update(subsetConfig(t, m))
	after := m.outbound.routes.Load().byService[svcPort{"db", "alpha", 80, "v2"}]
	if before == nil || after == nil || before.bal != after.bal || before.circuit != after.circuit {
		t.Error("a config update replaced subset v2's balancer or connection pool, want them kept")
	}

	// The admin view lists the routed subsets' balancers beside the
	// service port's, each with its own endpoints.
	var listed []string
	for _, cs := range m.outbound.clusters() {
		var eps []string
		for _, e := range cs.Endpoints {
			eps = append(eps, e.Address)
		}
		listed = append(listed, fmt.Sprintf("%s %s %v", cs.Service, cs.Subset, eps))
	}
	addr := func(i int) string { return endpointAddr(m.endpoints[i]) }
	want := []string{
		fmt.Sprintf("alpha.db  %v", []string{addr(0), addr(1), addr(2), addr(3)}),
		fmt.Sprintf("alpha.db v1 %v", []string{addr(0), addr(1)}),
		fmt.Sprintf("alpha.db v2 %v", []string{addr(2), addr(3)}),
		"alpha.db v3 []",
	}
	if !slices.Equal(listed, want) {
		t.Errorf("the admin view lists %q, want %q", listed, want)
	}
}

// A subset costs a proxy a balancer only when one of its routes sends to
// it: a DestinationRule's other subsets, however many, cost it nothing.
func TestSubsetsBuiltOnlyWhenRouted(t *testing.T) {
	m := newSubsetMesh(t)
	built := func() []string {
		var out []string
		for k := range m.outbound.routes.Load().byService {
			if k.subset != "" {
				out = append(out, k.subset)
			}
		}
		slices.Sort(out)
		return out
	}
	// v1, v2, v3 are routed to (v9 is not in the rule).
	if got := built(); !slices.Equal(got, []string{"v1", "v2", "v3"}) {
		t.Errorf("subsets with balancers: %v, want v1, v2, v3", got)
	}
	cfg := subsetConfig(t, m)
	for i := range 60 {
		cfg.Services[0].Subsets = append(cfg.Services[0].Subsets, &meshpb.Subset{Name: fmt.Sprintf("unused-%d", i)})
	}
	m.outbound.Update(cfg)
	if got := built(); !slices.Equal(got, []string{"v1", "v2", "v3"}) {
		t.Errorf("with 60 more subsets no route names: %v, want still v1, v2, v3", got)
	}
	cfg.Routes = nil
	m.outbound.Update(cfg)
	if got := built(); len(got) != 0 {
		t.Errorf("without routes: %v, want no subset balancer", got)
	}
}
