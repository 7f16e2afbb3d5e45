package controlclient

import (
	"slices"
	"testing"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

func svc(name, vip string) *meshpb.Service {
	return &meshpb.Service{Namespace: "web", Name: name, Vip: vip}
}

func names(c *meshpb.ProxyConfig) []string {
	var out []string
	for _, s := range c.GetServices() {
		out = append(out, s.GetName()+"@"+s.GetVip())
	}
	return out
}

func TestMerge(t *testing.T) {
	cur := &meshpb.ProxyConfig{Version: "1", Services: []*meshpb.Service{svc("a", "10.0.0.1"), svc("b", "10.0.0.2")}}
	for _, tc := range []struct {
		name    string
		cur     *meshpb.ProxyConfig
		upd     *meshpb.ConfigUpdate
		want    []string
		wantErr bool
	}{
		{"full replaces everything", cur, &meshpb.ConfigUpdate{Version: "2", Full: true, Upsert: []*meshpb.Service{svc("c", "10.0.0.3")}}, []string{"c@10.0.0.3"}, false},
		{"upsert changes one, keeps the rest, stays sorted", cur, &meshpb.ConfigUpdate{Version: "2", Upsert: []*meshpb.Service{svc("b", "10.0.0.9"), svc("0", "10.0.0.4")}},
			[]string{"0@10.0.0.4", "a@10.0.0.1", "b@10.0.0.9"}, false},
		{"remove", cur, &meshpb.ConfigUpdate{Version: "2", Remove: []string{"web/a"}}, []string{"b@10.0.0.2"}, false},
		{"incremental before any full config", nil, &meshpb.ConfigUpdate{Version: "2"}, nil, true},
		{"no version", cur, &meshpb.ConfigUpdate{Full: true}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Merge(tc.cur, tc.upd)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Merge() error = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if g := names(got); !slices.Equal(g, tc.want) {
				t.Errorf("Merge() services = %v, want %v", g, tc.want)
			}
			if got.GetVersion() != tc.upd.GetVersion() {
				t.Errorf("Merge() version = %q, want %q", got.GetVersion(), tc.upd.GetVersion())
			}
		})
	}
	if len(cur.GetServices()) != 2 || cur.GetServices()[1].GetVip() != "10.0.0.2" {
		t.Error("Merge modified the config in force")
	}
}

// Routes come complete (full updates, and any update to a proxy that
// did not say it takes route changes): they replace the routes in force,
// and an update without routes removes them. Or, routes_incremental,
// only the changes: the routes in force stay but those removed or
// upserted, in the control plane's order.
func TestMergeRoutes(t *testing.T) {
	r := func(kind, ns, name string) *meshpb.Route { return &meshpb.Route{Kind: kind, Namespace: ns, Name: name} }
	old, vs := r("HTTPRoute", "web", "old"), r("VirtualService", "api", "faults")
	cur := &meshpb.ProxyConfig{Version: "1", Services: []*meshpb.Service{svc("a", "10.0.0.1")}, Routes: []*meshpb.Route{old, vs}}
	changed := r("VirtualService", "api", "faults")
	changed.Generation = 2
	for _, tc := range []struct {
		name string
		upd  *meshpb.ConfigUpdate
		want []string
	}{
		{"full", &meshpb.ConfigUpdate{Version: "2", Full: true, Routes: []*meshpb.Route{r("HTTPRoute", "web", "split")}},
			[]string{"HTTPRoute/web/split"}},
		{"complete", &meshpb.ConfigUpdate{Version: "2", Routes: []*meshpb.Route{r("HTTPRoute", "web", "split"), r("HTTPRoute", "web", "mirror")}},
			[]string{"HTTPRoute/web/split", "HTTPRoute/web/mirror"}},
		{"complete, none", &meshpb.ConfigUpdate{Version: "2"}, nil},
		{"incremental, nothing changed", &meshpb.ConfigUpdate{Version: "2", RoutesIncremental: true},
			[]string{"HTTPRoute/web/old", "VirtualService/api/faults"}},
		{"incremental", &meshpb.ConfigUpdate{Version: "2", RoutesIncremental: true, RouteRemove: []string{"HTTPRoute/web/old"},
			RouteUpsert: []*meshpb.Route{changed, r("GRPCRoute", "web", "calls"), r("HTTPRoute", "web-x", "a"), r("HTTPRoute", "web", "z")}},
			[]string{"HTTPRoute/web/z", "HTTPRoute/web-x/a", "GRPCRoute/web/calls", "VirtualService/api/faults"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Merge(cur, tc.upd)
			if err != nil {
				t.Fatal(err)
			}
			var g []string
			for _, rt := range got.GetRoutes() {
				g = append(g, rt.Key())
			}
			if !slices.Equal(g, tc.want) {
				t.Errorf("Merge() routes = %v, want %v", g, tc.want)
			}
		})
	}
	if got, _ := Merge(cur, &meshpb.ConfigUpdate{Version: "2", RoutesIncremental: true, RouteUpsert: []*meshpb.Route{changed}}); got.GetRoutes()[1] != changed {
		t.Error("an upserted route did not replace the one in force")
	}
	if cur.GetRoutes()[0] != old || len(cur.GetRoutes()) != 2 {
		t.Error("Merge modified the config in force")
	}
	for _, bad := range []*meshpb.ConfigUpdate{
		{Version: "2", Full: true, RoutesIncremental: true},
		{Version: "2", RoutesIncremental: true, Routes: []*meshpb.Route{old}},
		{Version: "2", RouteRemove: []string{"HTTPRoute/web/old"}},
		{Version: "2", RouteUpsert: []*meshpb.Route{old}},
	} {
		if _, err := Merge(cur, bad); err == nil {
			t.Errorf("Merge(%v) = nil error, want one: routes either complete or incremental", bad)
		}
	}
}
