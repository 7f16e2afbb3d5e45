package proxycfg

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// testVirtualServices attach to snapshot()'s Services by their hosts,
// written in each form Istio takes. Which proxy gets which is in
// TestVirtualServicesForPod.
var testVirtualServices = mustParse(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: listed-vs, namespace: db}
spec:
  hosts: [listed]
  http: [{route: [{destination: {host: listed}}]}]
---
# Younger than listed-vs, for the same host: Conflicted.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: listed-later, namespace: db}
spec:
  hosts: [listed.db]
  http: [{route: [{destination: {host: alpha, port: {number: 8080}}}]}]
---
# A consumer VirtualService of the client's namespace.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: listed-consumer, namespace: client}
spec:
  hosts: [listed.db.svc.cluster.local]
  http: [{timeout: 2s, route: [{destination: {host: listed.db}}]}]
---
# Another namespace's consumer VirtualService.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: listed-other, namespace: other}
spec:
  hosts: [listed.db]
  http: [{route: [{destination: {host: listed.db}}]}]
---
# zero is exported to its own namespace only.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: zero-vs, namespace: db}
spec:
  hosts: [zero]
  http: [{route: [{destination: {host: zero}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost-vs, namespace: db}
spec:
  hosts: [ghost]
  http: [{route: [{destination: {host: alpha, port: {number: 8080}}}]}]
---
# A host that does not exist, and one whose client namespace has an
# HTTPRoute for it (alpha-timeouts): Gateway API routes win.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: two-hosts, namespace: client}
spec:
  hosts: [nowhere, alpha.db]
  http: [{route: [{destination: {host: alpha.db, port: {number: 8080}}}]}]
`)

// vsSnapshot is snapshot() with testVirtualServices, each created a
// minute after the one before it in the file.
func vsSnapshot() *catalog.Snapshot {
	snap := snapshot()
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, name := range []string{"listed-vs", "listed-later", "listed-consumer", "listed-other", "zero-vs", "ghost-vs", "two-hosts"} {
		for _, vs := range testVirtualServices.VirtualServices() {
			if vs.Name == name {
				c := *vs
				c.CreationTimestamp = created
				snap.VirtualServices = append(snap.VirtualServices, &c)
				created = created.Add(time.Minute)
			}
		}
	}
	slices.SortFunc(snap.VirtualServices, func(a, b *catalog.VirtualService) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return snap
}

// A proxy gets the producer VirtualServices of the Services it sees and
// its own namespace's consumer ones, as it gets routes; not another
// namespace's consumer ones, nor those of Services it does not see or
// that do not exist.
func TestVirtualServicesForPod(t *testing.T) {
	snap := vsSnapshot()
	r := Render(snap, "cluster.local")
	for _, tc := range []struct{ ns, pod, want string }{
		{"client", "client", "client/listed-consumer, client/two-hosts, db/listed-later, db/listed-vs"},
		{"db", "alpha-1", "db/listed-later, db/listed-vs, db/zero-vs"},
	} {
		cfg, err := ForPod(snap.Pod(tc.ns, tc.pod), r, "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rt := range cfg.GetRoutes() {
			if rt.GetKind() == string(catalog.KindVirtualService) {
				got = append(got, rt.GetNamespace()+"/"+rt.GetName())
			}
		}
		if g := strings.Join(got, ", "); g != tc.want {
			t.Errorf("ForPod(%s/%s) VirtualServices = %s, want %s", tc.ns, tc.pod, g, tc.want)
		}
		if n := len(cfg.GetRoutes()); n < 3 || cfg.GetRoutes()[n-1].GetKind() != string(catalog.KindVirtualService) {
			t.Errorf("ForPod(%s/%s): the VirtualServices should come after the routes", tc.ns, tc.pod)
		}
	}
}

// A change to a VirtualService a proxy gets changes its config's version,
// so the control plane sends it; a change to one it does not get leaves
// the version alone.
func TestVirtualServicesChangeVersion(t *testing.T) {
	version := func(change func(*catalog.Snapshot)) string {
		snap := vsSnapshot()
		change(snap)
		cfg, err := ForPod(snap.Pod("client", "client"), Render(snap, "cluster.local"), "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		return cfg.GetVersion()
	}
	retime := func(name string) func(*catalog.Snapshot) {
		return func(snap *catalog.Snapshot) {
			i := slices.IndexFunc(snap.VirtualServices, func(vs *catalog.VirtualService) bool { return vs.Name == name })
			c := *snap.VirtualServices[i]
			c.Spec.HTTP = slices.Clone(c.Spec.HTTP)
			c.Spec.HTTP[0].Timeout = "3s"
			snap.VirtualServices[i] = &c
		}
	}
	base := version(func(*catalog.Snapshot) {})
	if v := version(retime("listed-consumer")); v == base {
		t.Error("a change to a consumer VirtualService of the client's namespace left its version alone")
	}
	if v := version(retime("listed-vs")); v == base {
		t.Error("a change to a producer VirtualService the client gets left its version alone")
	}
	if v := version(retime("listed-other")); v != base {
		t.Error("a change to another namespace's consumer VirtualService changed the client's version")
	}
	if v := version(func(s *catalog.Snapshot) { s.VirtualServices = nil }); v == base {
		t.Error("removing every VirtualService left the client's version alone")
	}
}

// RouteStatus gives each VirtualService one parent per host: the oldest
// of a namespace's VirtualServices for a host is accepted, the others
// Conflicted, and Gateway API routes of the namespace win over them.
func TestVirtualServiceStatus(t *testing.T) {
	snap := vsSnapshot()
	got := map[string]string{}
	n := 0
	for _, st := range RouteStatus(snap) {
		if st.Route.Kind != catalog.KindVirtualService {
			continue
		}
		n++
		var parents []string
		for _, p := range st.Parents {
			conds := []string{p.ParentRef.Namespace + "/" + p.ParentRef.Name}
			for _, c := range p.Conditions {
				conds = append(conds, c.Type+"="+string(c.Status)+"/"+c.Reason)
			}
			parents = append(parents, strings.Join(conds, " "))
		}
		got[st.Route.Namespace+"/"+st.Route.Name] = strings.Join(parents, "; ")
	}
	for name, want := range map[string]string{
		"db/listed-vs":           "db/listed Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs",
		"db/listed-later":        "db/listed Accepted=False/Conflicted ResolvedRefs=True/ResolvedRefs",
		"client/listed-consumer": "db/listed Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs",
		"db/ghost-vs":            "db/ghost Accepted=False/NoMatchingParent ResolvedRefs=True/ResolvedRefs",
		"client/two-hosts":       "client/nowhere Accepted=False/NoMatchingParent ResolvedRefs=True/ResolvedRefs; db/alpha Accepted=False/Conflicted ResolvedRefs=True/ResolvedRefs",
	} {
		if got[name] != want {
			t.Errorf("status of VirtualService %s = %q, want %q", name, got[name], want)
		}
	}
	if n != len(snap.VirtualServices) {
		t.Errorf("RouteStatus gave %d VirtualService statuses for %d", n, len(snap.VirtualServices))
	}
}
