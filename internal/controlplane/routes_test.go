package controlplane

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// A route written to the registry reaches the proxies of its Service's
// clients in their next config, and so does every change to it, its
// removal included: routes are complete in every update.
func TestRoutesReachTheProxy(t *testing.T) {
	r := newRig(t)
	got := runProxy(t, r, "a")
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })
	core, weight := "", int32(90)
	split := &catalog.HTTPRoute{Meta: catalog.Meta{Namespace: "web", Name: "split"}, Spec: catalog.HTTPRouteSpec{
		ParentRefs: []catalog.ParentReference{{Group: &core, Kind: "Service", Name: "hello"}},
		Rules: []catalog.HTTPRouteRule{{BackendRefs: []catalog.HTTPBackendRef{{BackendRef: catalog.BackendRef{
			BackendObjectReference: catalog.BackendObjectReference{Name: "hello", Port: 8080}, Weight: &weight}}}}},
	}}
	hostnames := func(c *meshpb.ProxyConfig) []any {
		if len(c.GetRoutes()) != 1 || c.GetRoutes()[0].GetName() != "split" {
			return nil
		}
		h, _ := c.GetRoutes()[0].GetSpec().AsMap()["hostnames"].([]any)
		return h
	}
	r.snap.HTTPRoutes = []*catalog.HTTPRoute{split}
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return len(c.GetRoutes()) == 1 && hostnames(c) == nil })

	changed := *split
	changed.Spec.Hostnames = []string{"hello.example"}
	r.snap.HTTPRoutes = []*catalog.HTTPRoute{&changed}
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { h := hostnames(c); return len(h) == 1 && h[0] == "hello.example" })

	r.snap.HTTPRoutes = nil
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return len(c.GetRoutes()) == 0 })
	if endpoints(got.current()) != 2 {
		t.Errorf("after the route went, the proxy has %d endpoints, want its 2", endpoints(got.current()))
	}
}
