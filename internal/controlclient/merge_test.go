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

// Routes are complete in every update, full or not: an incremental
// update replaces the routes in force, and one without routes removes
// them.
func TestMergeRoutes(t *testing.T) {
	r := func(name string) *meshpb.Route { return &meshpb.Route{Kind: "HTTPRoute", Namespace: "web", Name: name} }
	cur := &meshpb.ProxyConfig{Version: "1", Services: []*meshpb.Service{svc("a", "10.0.0.1")}, Routes: []*meshpb.Route{r("old")}}
	for _, tc := range []struct {
		name string
		upd  *meshpb.ConfigUpdate
		want []string
	}{
		{"full", &meshpb.ConfigUpdate{Version: "2", Full: true, Routes: []*meshpb.Route{r("split")}}, []string{"split"}},
		{"incremental", &meshpb.ConfigUpdate{Version: "2", Routes: []*meshpb.Route{r("split"), r("mirror")}}, []string{"split", "mirror"}},
		{"incremental without routes", &meshpb.ConfigUpdate{Version: "2"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Merge(cur, tc.upd)
			if err != nil {
				t.Fatal(err)
			}
			var g []string
			for _, rt := range got.GetRoutes() {
				g = append(g, rt.GetName())
			}
			if !slices.Equal(g, tc.want) {
				t.Errorf("Merge() routes = %v, want %v", g, tc.want)
			}
		})
	}
}
