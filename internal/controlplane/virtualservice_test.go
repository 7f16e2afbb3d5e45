package controlplane

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// A VirtualService written to the registry reaches the proxies of its
// host's clients in their next config, as a route does, and so does every
// change to it and its removal.
func TestVirtualServicesReachTheProxy(t *testing.T) {
	r := newRig(t)
	got := runProxy(t, r, "a")
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return endpoints(c) == 2 })
	vs := func(timeout string) *catalog.VirtualService {
		return &catalog.VirtualService{Meta: catalog.Meta{Namespace: "web", Name: "hello-vs"}, Spec: catalog.VirtualServiceSpec{
			Hosts: []string{"hello"},
			HTTP:  []catalog.VSHTTPRoute{{Timeout: timeout, Route: []catalog.VSRouteTarget{{Destination: catalog.VSTarget{Host: "hello"}}}}},
		}}
	}
	timeout := func(c *meshpb.ProxyConfig) string {
		if len(c.GetRoutes()) != 1 || c.GetRoutes()[0].GetKind() != "VirtualService" || c.GetRoutes()[0].GetName() != "hello-vs" {
			return ""
		}
		http, _ := c.GetRoutes()[0].GetSpec().AsMap()["http"].([]any)
		if len(http) != 1 {
			return ""
		}
		s, _ := http[0].(map[string]any)["timeout"].(string)
		return s
	}
	r.snap.VirtualServices = []*catalog.VirtualService{vs("1s")}
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return timeout(c) == "1s" })

	r.snap.VirtualServices = []*catalog.VirtualService{vs("2s")}
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return timeout(c) == "2s" })

	r.snap.VirtualServices = nil
	r.write()
	waitConfig(t, got, func(c *meshpb.ProxyConfig) bool { return len(c.GetRoutes()) == 0 })
}
