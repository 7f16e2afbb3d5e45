package proxycfg

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// snapshot: db with alpha (2 replicas, one not ready) behind a Service
// with an HTTP and a gRPC port, zero (no sidecar) behind a TCP port; a
// client pod; STRICT in db; zero exported to its own namespace only;
// authorization policies of every scope and a JWT issuer for alpha; the
// routes of testRoutes and the DestinationRules of testRules.
func snapshot() *catalog.Snapshot {
	pod := func(ns, name, owner, app string, ip string, ready, sidecar bool) *catalog.RunningPod {
		return &catalog.RunningPod{
			Pod: &catalog.Pod{Meta: catalog.Meta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}}, Owner: owner,
				Spec: catalog.PodSpec{ServiceAccount: app, Containers: []catalog.Container{{Name: "c",
					Ports: []catalog.ContainerPort{{Name: "http", Port: 8080, Protocol: catalog.TCP}}}}}},
			IP: netip.MustParseAddr(ip), Ready: ready, Sidecar: sidecar,
		}
	}
	return &catalog.Snapshot{
		Version:    7,
		Namespaces: []*catalog.Namespace{{Meta: catalog.Meta{Name: "db"}}, {Meta: catalog.Meta{Name: "client"}}},
		Services: []*catalog.Service{
			{Meta: catalog.Meta{Namespace: "db", Name: "alpha"}, Selector: map[string]string{"app": "alpha"},
				ClusterIP: netip.MustParseAddr("10.201.0.2"), Ports: []catalog.ServicePort{
					{Name: "http", Protocol: catalog.TCP, Port: 8080, TargetPortName: "http"},
					{Name: "grpc-api", Protocol: catalog.TCP, Port: 9080, TargetPort: 9080},
					{Name: "dns", Protocol: catalog.UDP, Port: 53, TargetPort: 53},
				}},
			{Meta: catalog.Meta{Namespace: "db", Name: "zero", Annotations: map[string]string{ExportTo: "."}}, Selector: map[string]string{"app": "zero"},
				ClusterIP: netip.MustParseAddr("10.201.0.3"), Ports: []catalog.ServicePort{
					{Name: "raft", Protocol: catalog.TCP, Port: 5080, TargetPort: 5080, AppProtocol: "tcp"},
				}},
			{Meta: catalog.Meta{Namespace: "db", Name: "pending"}, Selector: map[string]string{"app": "x"}}, // no VIP yet
			// Without a selector: listed endpoints, a meshed pod (reached
			// over mTLS), an address outside the mesh, one not ready and
			// one that lists no port of this name.
			{Meta: catalog.Meta{Namespace: "db", Name: "listed"}, ClusterIP: netip.MustParseAddr("10.201.0.4"),
				Ports: []catalog.ServicePort{{Name: "http", Protocol: catalog.TCP, Port: 80}},
				Endpoints: []catalog.ServiceEndpoint{
					{IP: netip.MustParseAddr("10.200.0.5"), Ready: true, Ports: map[string]int32{"http": 8080}},
					{IP: netip.MustParseAddr("192.168.50.10"), Ready: true, Ports: map[string]int32{"http": 8000}},
					{IP: netip.MustParseAddr("192.168.50.11"), Ready: false, Ports: map[string]int32{"http": 8000}},
					{IP: netip.MustParseAddr("192.168.50.12"), Ready: true, Ports: map[string]int32{"web": 8000}},
				}},
		},
		Pods: []*catalog.RunningPod{
			pod("db", "alpha-1", "alpha", "alpha", "10.200.0.5", true, true),
			pod("db", "alpha-2", "alpha", "alpha", "10.200.0.4", false, true),
			pod("db", "zero-0", "", "zero", "10.200.0.6", true, false),
			pod("client", "client", "", "client", "10.200.0.9", true, true),
		},
		PeerAuthentications: []*catalog.PeerAuthentication{{Meta: catalog.Meta{Namespace: "db", Name: "default"}, Mode: catalog.MTLSStrict}},
		// alpha gets its own policy and the mesh-wide one; the one targeting
		// zero's Service and the other namespace's apply to neither alpha
		// nor the client, which gets the mesh-wide one only.
		AuthorizationPolicies: []*catalog.AuthorizationPolicy{
			{Meta: catalog.Meta{Namespace: "db", Name: "alpha-readers"}, Spec: catalog.AuthorizationSpec{
				Selector: &catalog.WorkloadSelector{MatchLabels: map[string]string{"app": "alpha"}},
				Rules: []catalog.AuthorizationRule{{
					From: []catalog.AuthorizationFrom{{Source: catalog.AuthorizationSource{Principals: []string{"cluster.local/ns/client/sa/client"}}}},
					To:   []catalog.AuthorizationTo{{Operation: catalog.AuthorizationOperation{Methods: []string{"GET"}, Paths: []string{"/health"}}}},
				}}}},
			{Meta: catalog.Meta{Namespace: "db", Name: "zero-only"}, DryRun: true, Spec: catalog.AuthorizationSpec{
				TargetRefs: []catalog.PolicyTargetRef{{Kind: "Service", Name: "zero"}}, Action: catalog.AuthorizationDeny,
				Rules: []catalog.AuthorizationRule{{}}}},
			{Meta: catalog.Meta{Namespace: "other", Name: "elsewhere"}, Spec: catalog.AuthorizationSpec{Rules: []catalog.AuthorizationRule{{}}}},
			{Meta: catalog.Meta{Namespace: "trellis-system", Name: "no-debug"}, Spec: catalog.AuthorizationSpec{Action: catalog.AuthorizationDeny,
				Rules: []catalog.AuthorizationRule{{To: []catalog.AuthorizationTo{{Operation: catalog.AuthorizationOperation{Paths: []string{"/debug/{**}"}}}}}}}},
		},
		RequestAuthentications: []*catalog.RequestAuthentication{{Meta: catalog.Meta{Namespace: "db", Name: "issuer"},
			Spec: catalog.RequestAuthenticationSpec{Selector: &catalog.WorkloadSelector{MatchLabels: map[string]string{"app": "alpha"}},
				JWTRules: []catalog.JWTRule{{Issuer: "https://issuer.example", JWKSURI: "https://issuer.example/keys", Audiences: []string{"graph"}}}}}},
		JWKS:       map[string][]byte{"https://issuer.example/keys": []byte(`{"keys":[]}`)},
		HTTPRoutes: testRoutes.HTTPRoutes(),
		GRPCRoutes: testRoutes.GRPCRoutes(),

		DestinationRules: testRules.DestinationRules(),
	}
}

func TestForPodGolden(t *testing.T) {
	snap := snapshot()
	r := Render(snap, "cluster.local")
	for _, tc := range []struct{ ns, pod string }{{"client", "client"}, {"db", "alpha-1"}} {
		t.Run(tc.ns+"/"+tc.pod, func(t *testing.T) {
			cfg, err := ForPod(snap.Pod(tc.ns, tc.pod), r, "cluster.local")
			if err != nil {
				t.Fatal(err)
			}
			got, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			// protojson's output varies its spacing on purpose; compare
			// content in a stable form.
			got = stable(t, got)
			path := filepath.Join("testdata", tc.ns+"-"+tc.pod+".golden.json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("ForPod(%s/%s) differs from %s (run go test ./internal/proxycfg -update if intended):\ngot:\n%s\nwant:\n%s", tc.ns, tc.pod, path, got, want)
			}
		})
	}
}

func TestVersionFollowsContent(t *testing.T) {
	snap := snapshot()
	r := Render(snap, "cluster.local")
	a, _ := ForPod(snap.Pod("client", "client"), r, "cluster.local")
	b, _ := ForPod(snap.Pod("client", "client"), Render(snapshot(), "cluster.local"), "cluster.local")
	if a.GetVersion() != b.GetVersion() {
		t.Errorf("equal snapshots give versions %s and %s", a.GetVersion(), b.GetVersion())
	}
	snap2 := snapshot()
	snap2.Pods[1].Ready = true // alpha-2 joins
	r2 := Render(snap2, "cluster.local")
	c, _ := ForPod(snap2.Pod("client", "client"), r2, "cluster.local")
	if c.GetVersion() == a.GetVersion() {
		t.Error("a new endpoint did not change the version")
	}
	if r.Hashes["db/zero"] != r2.Hashes["db/zero"] || r.Hashes["db/alpha"] == r2.Hashes["db/alpha"] {
		t.Errorf("service hashes: only db/alpha should change: %v -> %v", r.Hashes, r2.Hashes)
	}

	// The routes, computed once for the namespace, are in the version,
	// and the view's hashes are theirs: a route gone changes the version
	// and leaves the others' hashes as they were.
	view := r.For("client")
	if len(a.GetRoutes()) < 2 || len(view.RouteHashes) != len(a.GetRoutes()) {
		t.Fatalf("client's proxy has %d routes and its view %d hashes, want the same number, at least 2", len(a.GetRoutes()), len(view.RouteHashes))
	}
	for _, rt := range a.GetRoutes() {
		if view.RouteHashes[rt.Key()] != Hash(rt) {
			t.Errorf("route %s: the view's hash is not the route's", rt.Key())
		}
	}
	snap3 := snapshot()
	gone := snap3.HTTPRoutes[0]
	snap3.HTTPRoutes = snap3.HTTPRoutes[1:]
	r3 := Render(snap3, "cluster.local")
	d, _ := ForPod(snap3.Pod("client", "client"), r3, "cluster.local")
	if d.GetVersion() == a.GetVersion() || len(d.GetRoutes()) != len(a.GetRoutes())-1 {
		t.Errorf("a route removed: %d routes then %d, the version changed: %v; want one fewer, a new version",
			len(a.GetRoutes()), len(d.GetRoutes()), d.GetVersion() != a.GetVersion())
	}
	for k, h := range view.RouteHashes {
		if h3, ok := r3.For("client").RouteHashes[k]; ok != !strings.HasSuffix(k, "/"+gone.Namespace+"/"+gone.Name) || ok && h3 != h {
			t.Errorf("route %s: hash %s, then %s (kept: %v), want only %s/%s gone", k, h, h3, ok, gone.Namespace, gone.Name)
		}
	}
}

func stable(t *testing.T, data []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func TestExportTo(t *testing.T) {
	for _, tc := range []struct {
		annotation string // "-" for none
		sees       map[string]bool
	}{
		{"-", map[string]bool{"db": true, "client": true, "web": true}},
		{"*", map[string]bool{"db": true, "client": true, "web": true}},
		{".", map[string]bool{"db": true, "client": false, "web": false}},
		{"web, .", map[string]bool{"db": true, "client": false, "web": true}},
		{"client", map[string]bool{"db": true, "client": true, "web": false}},
	} {
		t.Run(tc.annotation, func(t *testing.T) {
			snap := snapshot()
			zero := snap.Services[1]
			zero.Annotations = map[string]string{ExportTo: tc.annotation}
			if tc.annotation == "-" {
				zero.Annotations = nil
			}
			r := Render(snap, "cluster.local")
			for ns, want := range tc.sees {
				got := false
				for _, s := range r.For(ns).Services {
					got = got || ServiceKey(s) == "db/zero"
				}
				if got != want {
					t.Errorf("exportTo %q: namespace %s sees db/zero = %v, want %v", tc.annotation, ns, got, want)
				}
			}
		})
	}
}
