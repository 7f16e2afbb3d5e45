// Package netpolicy compiles Kubernetes NetworkPolicies into an abstract,
// kernel-independent rule set: for each policy, the addresses of the pods it
// isolates and, per rule, the peer address ranges and ports it allows. It is
// pure: no I/O, deterministic output, golden-tested. internal/nft renders
// the result into nftables; the node agent (internal/nodeagent) wires the
// two together.
package netpolicy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Input is what compiling needs to know about the mesh.
type Input struct {
	Namespaces map[string]map[string]string // namespace name -> labels
	Pods       []Pod
	Policies   []*catalog.NetworkPolicy
}

// Pod is a pod with an address. Pods without one are ignored.
type Pod struct {
	Namespace, Name string
	IP              netip.Addr
	Labels          map[string]string
	Ports           []catalog.ContainerPort
	// Remote: the pod runs on another node, whose agent isolates it; here
	// it is only a peer that policies' selectors may name.
	Remote bool `json:",omitempty"`
}

// RuleSet is the compiled form of every policy, in namespace/name order.
type RuleSet struct {
	Policies []Policy
}

// Policy is one compiled NetworkPolicy. Pods are the addresses it isolates,
// in the directions Ingress and Egress say; traffic of an isolated pod in an
// isolated direction is allowed only when a rule of some policy isolating it
// in that direction allows it.
type Policy struct {
	Namespace, Name string
	Pods            []netip.Addr
	Ingress, Egress bool
	IngressRules    []Rule
	EgressRules     []Rule
}

// Rule allows traffic whose remote address is in Peers (any address when
// AnyPeer) and whose destination port matches one of Ports (any port when
// AnyPort). A rule that can match nothing is dropped at compile time.
type Rule struct {
	AnyPeer bool
	Peers   []Range
	AnyPort bool
	Ports   []Port
}

// Range is an inclusive range of IPv4 addresses.
type Range struct{ From, To netip.Addr }

// Port matches a protocol and destination ports From..To (both 0: every
// port). When Only is set (a named port), it matches only traffic to those
// destination pods, on which the name resolves to From.
type Port struct {
	Protocol catalog.Protocol
	From, To uint16
	Only     []netip.Addr
}

// Compile turns in into a RuleSet. It never fails: selectors that match
// nothing and named ports that resolve nowhere simply allow nothing, as in
// Kubernetes; input validation belongs to the manifest reader.
func Compile(in Input) RuleSet {
	pods := slices.Clone(in.Pods)
	pods = slices.DeleteFunc(pods, func(p Pod) bool { return !p.IP.IsValid() })
	sort.Slice(pods, func(i, j int) bool { return pods[i].IP.Less(pods[j].IP) })
	c := compiler{in: in, pods: pods}
	var rs RuleSet
	for _, np := range in.Policies {
		rs.Policies = append(rs.Policies, c.policy(np))
	}
	sort.Slice(rs.Policies, func(i, j int) bool {
		a, b := rs.Policies[i], rs.Policies[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return rs
}

type compiler struct {
	in   Input
	pods []Pod // with addresses, sorted by address
}

func (c *compiler) policy(np *catalog.NetworkPolicy) Policy {
	p := Policy{Namespace: np.Namespace, Name: np.Name, Ingress: np.Ingress, Egress: np.Egress}
	var selected []Pod
	for _, pod := range c.pods {
		if !pod.Remote && pod.Namespace == np.Namespace && np.PodSelector.Matches(pod.Labels) {
			selected = append(selected, pod)
			p.Pods = append(p.Pods, pod.IP)
		}
	}
	if np.Ingress {
		for _, r := range np.IngressRules {
			// Ingress named ports resolve on the policy's own pods.
			if rule, ok := c.rule(np.Namespace, r, func([]Range, bool) []Pod { return selected }); ok {
				p.IngressRules = append(p.IngressRules, rule)
			}
		}
	}
	if np.Egress {
		for _, r := range np.EgressRules {
			// Egress named ports resolve on the destination pods.
			if rule, ok := c.rule(np.Namespace, r, c.podsIn); ok {
				p.EgressRules = append(p.EgressRules, rule)
			}
		}
	}
	return p
}

// rule compiles one rule; false when it can match nothing. dests returns the
// pods on which named ports resolve, given the rule's peers.
func (c *compiler) rule(ns string, r catalog.NetworkPolicyRule, dests func([]Range, bool) []Pod) (Rule, bool) {
	out := Rule{AnyPeer: r.Peers == nil, AnyPort: r.Ports == nil}
	if !out.AnyPeer {
		out.Peers = c.peers(ns, r.Peers)
		if len(out.Peers) == 0 {
			return out, false
		}
	}
	for _, p := range r.Ports {
		out.Ports = append(out.Ports, c.port(p, dests(out.Peers, out.AnyPeer))...)
	}
	if !out.AnyPort && len(out.Ports) == 0 {
		return out, false
	}
	return out, true
}

func (c *compiler) peers(ns string, peers []catalog.NetworkPolicyPeer) []Range {
	var ranges []Range
	for _, peer := range peers {
		if peer.IPBlock != nil {
			ranges = append(ranges, blockRanges(*peer.IPBlock)...)
			continue
		}
		for _, pod := range c.pods {
			if c.peerSelects(ns, peer, pod) {
				ranges = append(ranges, Range{pod.IP, pod.IP})
			}
		}
	}
	return mergeRanges(ranges)
}

func (c *compiler) peerSelects(ns string, peer catalog.NetworkPolicyPeer, pod Pod) bool {
	if peer.NamespaceSelector == nil {
		if pod.Namespace != ns {
			return false
		}
	} else if !peer.NamespaceSelector.Matches(c.namespaceLabels(pod.Namespace)) {
		return false
	}
	return peer.PodSelector == nil || peer.PodSelector.Matches(pod.Labels)
}

// namespaceLabels includes kubernetes.io/metadata.name, which the API server
// sets on every namespace.
func (c *compiler) namespaceLabels(ns string) map[string]string {
	labels := map[string]string{"kubernetes.io/metadata.name": ns}
	for k, v := range c.in.Namespaces[ns] {
		labels[k] = v
	}
	return labels
}

// podsIn returns the pods whose addresses fall in ranges (every pod if any).
func (c *compiler) podsIn(ranges []Range, any bool) []Pod {
	if any {
		return c.pods
	}
	var out []Pod
	for _, p := range c.pods {
		if inRanges(ranges, p.IP) {
			out = append(out, p)
		}
	}
	return out
}

// port compiles one policy port. A named port becomes one Port per number it
// resolves to, each limited to the destination pods resolving it so.
func (c *compiler) port(p catalog.NetworkPolicyPort, dests []Pod) []Port {
	if p.Name == "" {
		to := p.EndPort
		if to == 0 {
			to = p.Port
		}
		return []Port{{Protocol: p.Protocol, From: uint16(p.Port), To: uint16(to)}}
	}
	byNumber := map[int32][]netip.Addr{}
	for _, pod := range dests {
		for _, cp := range pod.Ports {
			if cp.Name == p.Name && cp.Protocol == p.Protocol {
				byNumber[cp.Port] = append(byNumber[cp.Port], pod.IP)
			}
		}
	}
	var out []Port
	for n, ips := range byNumber {
		out = append(out, Port{Protocol: p.Protocol, From: uint16(n), To: uint16(n), Only: ips})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].From < out[j].From })
	return out
}

// String renders the rule set in a stable, readable form (golden files).
func (rs RuleSet) String() string {
	var b strings.Builder
	for _, p := range rs.Policies {
		var dirs []string
		if p.Ingress {
			dirs = append(dirs, "ingress")
		}
		if p.Egress {
			dirs = append(dirs, "egress")
		}
		fmt.Fprintf(&b, "policy %s/%s isolates %s for %s\n", p.Namespace, p.Name, addrs(p.Pods), strings.Join(dirs, ","))
		for i, r := range p.IngressRules {
			fmt.Fprintf(&b, "  ingress %d: from %s to %s\n", i, r.peerString(), r.portString())
		}
		for i, r := range p.EgressRules {
			fmt.Fprintf(&b, "  egress %d: to %s on %s\n", i, r.peerString(), r.portString())
		}
	}
	return b.String()
}

func (r Rule) peerString() string {
	if r.AnyPeer {
		return "any"
	}
	var parts []string
	for _, rg := range r.Peers {
		parts = append(parts, rg.String())
	}
	return strings.Join(parts, ",")
}

func (r Rule) portString() string {
	if r.AnyPort {
		return "any port"
	}
	var parts []string
	for _, p := range r.Ports {
		s := string(p.Protocol)
		switch {
		case p.From == 0:
			s += "/all"
		case p.From == p.To:
			s += fmt.Sprintf("/%d", p.From)
		default:
			s += fmt.Sprintf("/%d-%d", p.From, p.To)
		}
		if p.Only != nil {
			s += " only " + addrs(p.Only)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func addrs(list []netip.Addr) string {
	if len(list) == 0 {
		return "[]"
	}
	parts := make([]string, len(list))
	for i, a := range list {
		parts[i] = a.String()
	}
	return "[" + strings.Join(parts, " ") + "]"
}
