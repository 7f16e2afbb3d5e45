package truthtable

import (
	"fmt"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/manifest"
)

// model is the namespaces and pods of the tables as one-host manifests, so
// that the policies' named ports resolve.
func model() string {
	var b strings.Builder
	for _, ns := range Namespaces {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %q, labels: {ns: %q}}\n---\n", ns, ns)
		for _, pod := range Pods {
			fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %q, labels: {pod: %s}}\n"+
				"spec: {containers: [{name: server, command: [x], ports: [{name: serve-80-tcp, containerPort: 80}, {name: serve-81-tcp, containerPort: 81}, "+
				"{name: serve-80-udp, containerPort: 80, protocol: UDP}, {name: serve-81-udp, containerPort: 81, protocol: UDP}]}]}\n---\n", pod, ns, pod)
		}
	}
	return b.String()
}

// Every step's policies are valid NetworkPolicies that the manifest
// reader takes, every step says what it expects, and names are unique (a
// scenario is run and reported by its name).
func TestScenariosAreWellFormed(t *testing.T) {
	ips := map[string]string{}
	for i, k := range Keys() {
		ips[k] = fmt.Sprintf("10.244.0.%d", 10+i)
	}
	names := map[string]bool{}
	steps := 0
	for _, sc := range Scenarios() {
		if names[sc.Name] {
			t.Errorf("scenario %q twice", sc.Name)
		}
		names[sc.Name] = true
		for i, st := range sc.Steps {
			steps++
			if st.Want == nil || (st.Policies == nil && st.Label == nil && !st.DeleteAll) {
				t.Errorf("%s step %d: it changes nothing or expects nothing", sc.Name, i+1)
			}
			if st.Policies == nil {
				continue
			}
			set, err := manifest.Parse([]manifest.Source{{Name: sc.Name, Data: []byte(model() + st.Policies(ips))}})
			if err != nil {
				t.Errorf("%s step %d: %v", sc.Name, i+1, err)
				continue
			}
			if len(set.NetworkPolicies()) == 0 {
				t.Errorf("%s step %d: no NetworkPolicy read", sc.Name, i+1)
			}
		}
	}
	if len(names) != 40 || steps != 48 {
		t.Errorf("%d scenarios with %d steps; the tables have 40 with 48 (update the docs when that changes)", len(names), steps)
	}
}

func TestCompare(t *testing.T) {
	ips := map[string]string{}
	for i, k := range Keys() {
		ips[k] = fmt.Sprintf("10.0.0.%d", i+1)
	}
	got := map[string]bool{}
	for _, from := range Keys() {
		targets, cases := Targets(from, ips)
		if len(targets) != 8*4 || len(cases) != len(targets) {
			t.Fatalf("Targets from %s = %d targets, %d cases; want 32", from, len(targets), len(cases))
		}
		for _, tg := range targets {
			got[cases[tg]] = !strings.Contains(cases[tg], "-> x/a ")
		}
	}
	matched, total, mismatches := Compare(got, AllowAll)
	if total != 9*8*4 || matched != total-8*4 || len(mismatches) != 8*4 {
		t.Errorf("Compare = %d/%d, %d mismatches; want %d/%d", matched, total, len(mismatches), total-32, 9*8*4)
	}
	if !strings.HasPrefix(mismatches[0], "x/b -> x/a tcp/80: got false, want true") {
		t.Errorf("first mismatch %q", mismatches[0])
	}
	if _, _, m := Compare(got, func(_, to string, _ Port) bool { return to != "x/a" }); len(m) != 0 {
		t.Errorf("mismatches against the right table: %v", m)
	}
}

// The CIDR scenarios hold on any pod network, IPv6 included.
func TestAddressesOfAnyPodNetwork(t *testing.T) {
	ips := map[string]string{}
	for i, k := range Keys() {
		ips[k] = fmt.Sprintf("10.244.%d.%d", i/4, 10+i) // over three /24s
	}
	if got := covering(ips); got != "10.244.0.0/22" {
		t.Errorf("covering = %q, want 10.244.0.0/22", got)
	}
	for i, k := range Keys() {
		ips[k] = fmt.Sprintf("fd00::%x", 0x100+i)
	}
	if got := covering(ips); got != "fd00::100/124" {
		t.Errorf("covering = %q, want fd00::100/124", got)
	}
	if got := host("fd00::105"); got != "fd00::105/128" {
		t.Errorf("host = %q", got)
	}
	targets, _ := Targets("x/a", ips)
	if targets[0] != "tcp/[fd00::101]:80" {
		t.Errorf("first target %q, want tcp/[fd00::101]:80", targets[0])
	}
}
