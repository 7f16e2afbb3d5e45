package nft

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/netpolicy"
)

func testRuleSet(extraPod string) netpolicy.RuleSet {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	pods := []netip.Addr{a("10.99.0.2")}
	if extraPod != "" {
		pods = append(pods, a(extraPod))
	}
	return netpolicy.RuleSet{Policies: []netpolicy.Policy{
		{Namespace: "x", Name: "web", Pods: pods, Ingress: true, IngressRules: []netpolicy.Rule{
			{Peers: []netpolicy.Range{{From: a("10.99.0.0"), To: a("10.99.0.9")}, {From: a("10.99.1.0"), To: a("255.255.255.255")}},
				Ports: []netpolicy.Port{{Protocol: catalog.TCP, From: 80, To: 81}, {Protocol: catalog.UDP, From: 53, To: 53, Only: pods}}},
		}},
		{Namespace: "x", Name: "deny-egress", Pods: []netip.Addr{a("10.99.0.3")}, Egress: true},
		{Namespace: "y", Name: "allow-all", Pods: []netip.Addr{a("10.99.0.4")}, Ingress: true, Egress: true,
			IngressRules: []netpolicy.Rule{{AnyPeer: true, AnyPort: true}}, EgressRules: []netpolicy.Rule{{AnyPeer: true, AnyPort: true}}},
	}}
}

func TestApplyPoliciesIncrementally(t *testing.T) {
	ns := testNetns(t)
	table := Table{Name: "trellis-netpol-test", NetNS: int(ns)}
	rs := testRuleSet("")
	stats, err := ApplyPolicies(table, rs, nil)
	if err != nil {
		t.Fatalf("ApplyPolicies() = %v", err)
	}
	if stats.Units != 4 || stats.UnitsAdded != 4 {
		t.Errorf("first apply stats = %+v, want 4 units added", stats)
	}
	got, err := RuleCounts(table)
	if err != nil {
		t.Fatal(err)
	}
	want := ExpectedRuleCounts(rs)
	if len(got) != len(want) {
		t.Errorf("chains = %v, want %v", got, want)
	}
	for ch, n := range want {
		if got[ch] != n {
			t.Errorf("chain %s has %d rules, want %d", ch, got[ch], n)
		}
	}

	// The same rule set again changes no policy chain.
	if stats, err = ApplyPolicies(table, rs, nil); err != nil || stats.UnitsAdded != 0 || stats.UnitsRemoved != 0 {
		t.Errorf("reapply = %+v, %v; want nothing added or removed", stats, err)
	}
	// One policy gains a pod: only its chain is replaced.
	if stats, err = ApplyPolicies(table, testRuleSet("10.99.0.7"), nil); err != nil || stats.UnitsAdded != 1 || stats.UnitsRemoved != 1 {
		t.Errorf("apply with one policy changed = %+v, %v; want 1 added, 1 removed", stats, err)
	}
	// A chain reported as altered is rebuilt even though unchanged.
	dirty := map[string]bool{}
	for _, u := range units(testRuleSet("10.99.0.7")) {
		dirty[u.name] = u.policy.Name == "allow-all" && u.ingress
	}
	if stats, err = ApplyPolicies(table, testRuleSet("10.99.0.7"), dirty); err != nil || stats.UnitsAdded != 1 {
		t.Errorf("apply with a dirty chain = %+v, %v; want 1 rebuilt", stats, err)
	}
	counts, err := DeniedCounts(table)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"in.x.web", "out.x.deny-egress", "in.y.allow-all", "out.y.allow-all"} {
		if _, ok := counts[name]; !ok {
			t.Errorf("no denial counter %s in %v", name, counts)
		}
	}
	if flows, err := DeniedFlows(table); err != nil || len(flows) != 0 {
		t.Errorf("DeniedFlows() = %v, %v; want none yet", flows, err)
	}
	// Everything removed: only the base chains stay.
	if stats, err = ApplyPolicies(table, netpolicy.RuleSet{}, nil); err != nil || stats.UnitsRemoved != 4 {
		t.Errorf("apply of no policies = %+v, %v; want 4 removed", stats, err)
	}
	if got, _ := RuleCounts(table); len(got) != 2 || got[ingressChain] != 4 {
		t.Errorf("after removing every policy, chains = %v", got)
	}
}

// TestPolicyScale applies 200 policies over 1000 pods, then changes one, and
// prints the figures (recorded in bench/RESULTS.md). It asserts only what
// does not depend on machine speed: the rule count does not grow with pods,
// and an update touches only the changed policy.
func TestPolicyScale(t *testing.T) {
	ns := testNetns(t)
	table := Table{Name: "trellis-netpol-scale", NetNS: int(ns)}
	build := func(podsInFirst int) netpolicy.RuleSet {
		var rs netpolicy.RuleSet
		for i := range 200 {
			var pods []netip.Addr
			n := 5
			if i == 0 {
				n = podsInFirst
			}
			for j := range n {
				k := (i*5 + j) % 1000
				pods = append(pods, netip.AddrFrom4([4]byte{10, 98, byte(k / 250), byte(1 + k%250)}))
			}
			peers := []netpolicy.Range{{From: netip.AddrFrom4([4]byte{10, 98, 0, 1}), To: netip.AddrFrom4([4]byte{10, 98, 3, 250})}}
			rs.Policies = append(rs.Policies, netpolicy.Policy{
				Namespace: "ns" + string(rune('a'+i%20)), Name: fmt.Sprintf("p%d", i),
				Pods: pods, Ingress: true,
				IngressRules: []netpolicy.Rule{{Peers: peers, Ports: []netpolicy.Port{{Protocol: catalog.TCP, From: 8080, To: 8080}}}},
			})
		}
		return rs
	}
	start := time.Now()
	stats, err := ApplyPolicies(table, build(5), nil)
	if err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	start = time.Now()
	one, err := ApplyPolicies(table, build(6), nil)
	if err != nil {
		t.Fatal(err)
	}
	incremental := time.Since(start)
	fmt.Printf("netpol scale: 1000 pods, 200 policies: full apply %s, %d rules; one policy changed: %s, %d chain(s) replaced\n",
		full.Round(time.Millisecond), stats.Rules, incremental.Round(time.Millisecond), one.UnitsAdded)
	if one.UnitsAdded != 1 || one.UnitsRemoved != 1 {
		t.Errorf("changing one policy replaced %d and removed %d chains, want 1 and 1", one.UnitsAdded, one.UnitsRemoved)
	}
	// 4 + 2 per policy in the base chains, 1 per policy chain: no pod term.
	if want := 4 + 4 + 200*3; stats.Rules != want {
		t.Errorf("rules = %d, want %d (independent of the number of pods)", stats.Rules, want)
	}
}
