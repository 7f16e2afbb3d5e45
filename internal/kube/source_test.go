package kube

import (
	"bytes"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

// The endpoints of a Service without a selector are what its slices list:
// IPv4 addresses, TCP ports by name, ready unless said otherwise.
func TestListedEndpoints(t *testing.T) {
	name, udp, port, dns := "http", corev1.ProtocolUDP, int32(8080), int32(53)
	no := false
	got := ListedEndpoints([]*discoveryv1.EndpointSlice{
		{AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}, {Name: &[]string{"dns"}[0], Port: &dns, Protocol: &udp}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.0.1"}},
				{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
			}},
		{AddressType: discoveryv1.AddressTypeIPv6, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}},
	})
	ports := map[string]int32{"http": 8080}
	want := []catalog.ServiceEndpoint{
		{IP: netip.MustParseAddr("10.1.0.1"), Ready: true, Ports: ports},
		{IP: netip.MustParseAddr("10.1.0.2"), Ready: false, Ports: ports},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListedEndpoints = %+v, want %+v", got, want)
	}
}

// AuthorizationPolicies listed from the API server decode as manifests
// do, in either group, without what the server adds (status,
// managedFields); an invalid one is left out and reported once, however
// many snapshots are built.
func TestDecodeListedAuthorizationPolicies(t *testing.T) {
	object := func(doc string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		return u
	}
	trellis := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	istio := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, c := range []struct {
		into cache.Indexer
		doc  string
	}{
		{trellis, `apiVersion: security.trellis.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: data, uid: 0a1b, resourceVersion: "7", annotations: {istio.io/dry-run: "true"},
  managedFields: [{manager: kubectl, operation: Apply}]}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {principals: [cluster.local/ns/web/sa/web]}}], to: [{operation: {ports: ["5432"]}}]}]
status: {validationMessages: []}
`},
		{istio, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: web}
spec: {selector: {matchLabels: {app: api}}, action: CUSTOM, provider: {name: opa}}
`},
		{istio, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: web}
spec: {action: DENY, rules: [{}]}
`},
	} {
		if err := c.into.Add(object(c.doc)); err != nil {
			t.Fatal(err)
		}
	}
	ls := []gvrLister{
		{AuthorizationPolicyResources[0], cache.NewGenericLister(trellis, AuthorizationPolicyResources[0].GroupResource())},
		{AuthorizationPolicyResources[1], cache.NewGenericLister(istio, AuthorizationPolicyResources[1].GroupResource())},
	}
	var logs bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	defer slog.SetDefault(prev)
	warned := newWarnings()
	for range 2 { // two snapshots
		got := decodeListedOr(ls, "AuthorizationPolicy", manifest.DecodeAuthorizationPolicy, denyInScope, warned)
		warned.next()
		sortSnapshot(&catalog.Snapshot{AuthorizationPolicies: got})
		var names []string
		for _, ap := range got {
			names = append(names, ap.Namespace+"/"+ap.Name)
		}
		if want := []string{"data/db", "web/deny-all", "web/ext"}; !reflect.DeepEqual(names, want) {
			t.Fatalf("decodeListed = %v, want %v", names, want)
		}
		db := got[0]
		if !db.DryRun || db.Spec.Selector == nil || db.Spec.Selector.MatchLabels["app"] != "db" ||
			len(db.Spec.Rules) != 1 || !reflect.DeepEqual(db.Spec.Rules[0].To[0].Operation.Ports, []string{"5432"}) {
			t.Errorf("data/db decoded as %+v", db)
		}
		if got[1].Spec.Action != catalog.AuthorizationDeny {
			t.Errorf("web/deny-all: action %q, want DENY", got[1].Spec.Action)
		}
		// The policy the engine refuses fails closed in its scope.
		if ext := got[2]; ext.Spec.Action != catalog.AuthorizationDeny || len(ext.Spec.Rules) != 1 || ext.Spec.Selector == nil ||
			ext.Spec.Selector.MatchLabels["app"] != "api" {
			t.Errorf("web/ext, which cannot be enforced as written, stands as %+v; want DENY of everything for app=api", ext.Spec)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "cannot be enforced as written"); n != 1 || !strings.Contains(out, "web/ext") || !strings.Contains(out, "CUSTOM") {
		t.Errorf("errors logged (want one, naming web/ext and CUSTOM):\n%s", out)
	}
}
