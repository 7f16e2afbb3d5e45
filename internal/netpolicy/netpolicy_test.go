package netpolicy

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// inputFrom reads a manifest and gives its pods addresses 10.0.0.1, .2, ...
// in namespace/name order.
func inputFrom(t *testing.T, path string) Input {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := manifest.Parse([]manifest.Source{{Name: path, Data: data}})
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Namespaces: map[string]map[string]string{}, Policies: set.NetworkPolicies()}
	for _, ns := range set.Namespaces() {
		in.Namespaces[ns.Name] = ns.Labels
	}
	for i, p := range set.Pods() {
		pod := Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}
		for _, c := range p.Spec.Containers {
			pod.Ports = append(pod.Ports, c.Ports...)
		}
		in.Pods = append(in.Pods, pod)
	}
	return in
}

func TestCompileGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			got := Compile(inputFrom(t, path)).String()
			golden := strings.TrimSuffix(path, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Compile(%s) differs from %s (-want +got):\n-%s\n+%s", path, golden,
					strings.ReplaceAll(string(want), "\n", "\n-"), strings.ReplaceAll(got, "\n", "\n+"))
			}
		})
	}
}

func TestBlockRanges(t *testing.T) {
	tests := []struct {
		cidr   string
		except []string
		want   string
	}{
		{"10.0.0.0/24", nil, "10.0.0.0-10.0.0.255"},
		{"10.0.0.0/24", []string{"10.0.0.128/25"}, "10.0.0.0-10.0.0.127"},
		{"10.0.0.0/24", []string{"10.0.0.5/32", "10.0.0.6/32"}, "10.0.0.0-10.0.0.4,10.0.0.7-10.0.0.255"},
		{"10.0.0.7/32", nil, "10.0.0.7"},
		{"0.0.0.0/0", []string{"10.0.0.0/8"}, "0.0.0.0-9.255.255.255,11.0.0.0-255.255.255.255"},
	}
	for _, tt := range tests {
		b := catalog.IPBlock{CIDR: netip.MustParsePrefix(tt.cidr)}
		for _, e := range tt.except {
			b.Except = append(b.Except, netip.MustParsePrefix(e))
		}
		if got := (Rule{Peers: blockRanges(b)}).peerString(); got != tt.want {
			t.Errorf("blockRanges(%s except %v) = %s, want %s", tt.cidr, tt.except, got, tt.want)
		}
	}
}

func TestMergeRanges(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	got := mergeRanges([]Range{{a("10.0.0.5"), a("10.0.0.5")}, {a("10.0.0.1"), a("10.0.0.3")}, {a("10.0.0.4"), a("10.0.0.4")},
		{a("10.0.0.9"), a("10.0.0.20")}, {a("10.0.0.10"), a("10.0.0.11")}, {a("255.255.255.255"), a("255.255.255.255")}})
	if s := (Rule{Peers: got}).peerString(); s != "10.0.0.1-10.0.0.5,10.0.0.9-10.0.0.20,255.255.255.255" {
		t.Errorf("mergeRanges() = %s", s)
	}
}

// A pod of another node is a peer policies may name, never isolated here:
// its own node's agent isolates it.
func TestRemotePodsArePeersOnly(t *testing.T) {
	local, remote := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	web := map[string]string{"app": "web"}
	in := Input{
		Namespaces: map[string]map[string]string{"shop": nil},
		Pods: []Pod{{Namespace: "shop", Name: "here", IP: local, Labels: web},
			{Namespace: "shop", Name: "there", IP: remote, Labels: web, Remote: true}},
		Policies: []*catalog.NetworkPolicy{{Meta: catalog.Meta{Namespace: "shop", Name: "web-from-web"},
			PodSelector: catalog.LabelSelector{MatchLabels: web}, Ingress: true,
			IngressRules: []catalog.NetworkPolicyRule{{Peers: []catalog.NetworkPolicyPeer{{PodSelector: &catalog.LabelSelector{MatchLabels: web}}}}}}},
	}
	p := Compile(in).Policies[0]
	if len(p.Pods) != 1 || p.Pods[0] != local {
		t.Errorf("isolated pods %v, want only the local %v", p.Pods, local)
	}
	if len(p.IngressRules) != 1 || len(p.IngressRules[0].Peers) != 1 || p.IngressRules[0].Peers[0] != (Range{local, remote}) {
		t.Errorf("ingress rules %+v, want one allowing both pods %v-%v", p.IngressRules, local, remote)
	}
}
