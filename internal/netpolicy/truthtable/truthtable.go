// Package truthtable holds the Kubernetes NetworkPolicy conformance truth
// tables: the model of the upstream network-policy e2e suite (namespaces
// x, y and z, each with pods a, b and c serving TCP and UDP on ports 80 and
// 81) and scenarios that apply policies, relabel pods and namespaces, and
// say for every ordered pair of distinct pods, port and protocol whether
// traffic must pass. One-host mode's test and `trellis check
// network-policies` on a cluster run the same scenarios; each brings its
// own way to make the pods, apply the steps and probe.
package truthtable

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

var (
	// Namespaces of the model; each carries the label ns=<name>.
	Namespaces = []string{"x", "y", "z"}
	// Pods in each namespace; each carries the label pod=<name> and
	// declares the container ports serve-80-tcp, serve-81-tcp,
	// serve-80-udp and serve-81-udp.
	Pods = []string{"a", "b", "c"}
	// Ports every pod serves and every probe tries.
	Ports = []Port{{"tcp", 80}, {"tcp", 81}, {"udp", 80}, {"udp", 81}}
)

// Port is a protocol ("tcp" or "udp") and a port number.
type Port struct {
	Proto  string
	Number int
}

func (p Port) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Number) }

// Keys lists every pod of the model as "namespace/pod".
func Keys() []string {
	var keys []string
	for _, ns := range Namespaces {
		for _, p := range Pods {
			keys = append(keys, ns+"/"+p)
		}
	}
	return keys
}

// Case names one probe: "x/a -> y/b tcp/80".
func Case(from, to string, p Port) string { return from + " -> " + to + " " + p.String() }

// Expectation says whether from may reach to on p.
type Expectation func(from, to string, p Port) bool

// Label sets the whole label set of a pod, or of a namespace when Pod is
// empty (the namespace keeps kubernetes.io/metadata.name, which Kubernetes
// sets itself).
type Label struct {
	Namespace, Pod string
	Labels         map[string]string
}

// Step is one change and the reachability it must lead to. Steps run their
// parts in field order.
type Step struct {
	// DeleteAll deletes every policy in the model's namespaces.
	DeleteAll bool
	// Policies returns NetworkPolicy YAML to apply; ips maps each pod's
	// key to its address, for the scenarios with ipBlock peers.
	Policies func(ips map[string]string) string
	// Label changes labels.
	Label *Label
	Want  Expectation
}

// Scenario is a named sequence of steps, run from no policy at all and
// followed by deleting every policy.
type Scenario struct {
	Name  string
	Steps []Step
}

// Targets lists what a probe from pod `from` tries, as "proto/ip:port",
// with the case each target checks.
func Targets(from string, ips map[string]string) (targets []string, cases map[string]string) {
	cases = map[string]string{}
	for _, to := range Keys() {
		if to == from {
			continue // a pod to itself is not probed, as upstream
		}
		for _, p := range Ports {
			target := p.Proto + "/" + net.JoinHostPort(ips[to], strconv.Itoa(p.Number))
			targets = append(targets, target)
			cases[target] = Case(from, to, p)
		}
	}
	return targets, cases
}

// Compare counts the cases of got (case -> reached) that match want and
// lists those that do not, sorted.
func Compare(got map[string]bool, want Expectation) (matched, total int, mismatches []string) {
	for _, from := range Keys() {
		for _, to := range Keys() {
			if from == to {
				continue
			}
			for _, p := range Ports {
				total++
				key := Case(from, to, p)
				if w := want(from, to, p); got[key] == w {
					matched++
				} else {
					mismatches = append(mismatches, fmt.Sprintf("%s: got %v, want %v", key, got[key], w))
				}
			}
		}
	}
	sort.Strings(mismatches)
	return matched, total, mismatches
}

// Summarize shortens a mismatch list to its first 20 lines.
func Summarize(mismatches []string) string {
	if len(mismatches) > 20 {
		mismatches = append(mismatches[:20:20], fmt.Sprintf("... and %d more", len(mismatches)-20))
	}
	return strings.Join(mismatches, "\n")
}

// Policy writes a NetworkPolicy document; spec is YAML indented by two
// spaces. Namespace names are quoted: YAML 1.1 reads a bare y as true.
func Policy(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: %q}\nspec:\n%s\n---\n", name, ns, spec)
}

// AllowAll expects every probe to pass.
func AllowAll(string, string, Port) bool { return true }

// NsOf and PodOf split a pod key.
func NsOf(key string) string  { ns, _, _ := strings.Cut(key, "/"); return ns }
func PodOf(key string) string { _, p, _ := strings.Cut(key, "/"); return p }

// fixed is a Policies function for YAML that needs no address.
func fixed(yaml string) func(map[string]string) string {
	return func(map[string]string) string { return yaml }
}

// host is a pod's address as a CIDR of that one address.
func host(ip string) string {
	if a, err := netip.ParseAddr(ip); err == nil {
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	return ip + "/32"
}

// covering is the longest prefix holding every pod of the model: a CIDR
// around them on any pod network.
func covering(ips map[string]string) string {
	var first netip.Addr
	bits := 128
	for _, k := range Keys() {
		a, err := netip.ParseAddr(ips[k])
		if err != nil {
			continue
		}
		if !first.IsValid() {
			first, bits = a, a.BitLen()
			continue
		}
		for bits > 0 {
			p, _ := first.Prefix(bits)
			if p.Contains(a) {
				break
			}
			bits--
		}
	}
	if !first.IsValid() {
		return "0.0.0.0/0"
	}
	p, _ := first.Prefix(bits)
	return p.String()
}

// Scenarios returns the truth tables.
func Scenarios() []Scenario {
	tcp80 := Port{"tcp", 80}
	isA := func(k string) bool { return k == "x/a" }
	one := func(policies string, want Expectation) []Step {
		return []Step{{Policies: fixed(policies), Want: want}}
	}
	relabelPod := func(ns, pod string, labels map[string]string, want Expectation) Step {
		return Step{Label: &Label{Namespace: ns, Pod: pod, Labels: labels}, Want: want}
	}
	return []Scenario{
		{"default-deny-ingress", one(Policy("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]"),
			func(f, t string, _ Port) bool { return NsOf(t) != "x" })},
		{"default-deny-all", one(Policy("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]"),
			func(f, t string, _ Port) bool { return NsOf(t) != "x" && NsOf(f) != "x" })},
		{"default-deny-egress", one(Policy("x", "deny-egress", "  podSelector: {}\n  policyTypes: [Egress]"),
			func(f, t string, _ Port) bool { return NsOf(f) != "x" })},
		{"allow from pod in same namespace by podSelector", one(
			Policy("x", "allow-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || f == "x/b" })},
		{"allow from namespace by namespaceSelector", one(
			Policy("x", "allow-ns-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || NsOf(f) == "y" })},
		{"podSelector with matchExpressions", one(
			Policy("x", "allow-in-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || f == "x/b" })},
		{"namespaceSelector with matchExpressions", one(
			Policy("x", "allow-not-x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || NsOf(f) != "x" })},
		{"podSelector OR namespaceSelector", one(
			Policy("x", "allow-b-or-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || f == "x/b" || NsOf(f) == "y" })},
		{"podSelector AND namespaceSelector", one(
			Policy("x", "allow-y-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}, namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || f == "y/b" })},
		{"multiple podSelectors and namespaceSelectors", one(
			Policy("x", "allow-multi", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || (NsOf(f) != "x" && PodOf(f) != "a") })},
		{"default namespace label kubernetes.io/metadata.name", one(
			Policy("x", "allow-meta-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || NsOf(f) == "y" })},
		{"default namespace label with NotIn", one(
			Policy("x", "allow-meta-not-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [\"y\"]}]}}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) || NsOf(f) != "y" })},
		{"deny ingress from other namespaces", one(
			Policy("x", "same-ns", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]"),
			func(f, t string, _ Port) bool { return NsOf(t) != "x" || NsOf(f) == "x" })},
		{"allow on one port from a namespace", one(
			Policy("x", "y-on-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 81, protocol: TCP}]}]"),
			func(f, t string, p Port) bool { return !isA(t) || (NsOf(f) == "y" && p == Port{"tcp", 81}) })},
		{"stacked policies with overlapping podSelectors", one(
			Policy("x", "y-on-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 81}]}]")+
				Policy("x", "y-on-80", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 80}]}]"),
			func(f, t string, p Port) bool { return !isA(t) || (NsOf(f) == "y" && p.Proto == "tcp") })},
		{"allow-all ingress", one(Policy("x", "allow-all", "  podSelector: {}\n  ingress: [{}]"), AllowAll)},
		{"ingress on one named port", one(
			Policy("x", "named-81", "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}]}]"),
			func(f, t string, p Port) bool { return NsOf(t) != "x" || p == Port{"tcp", 81} })},
		{"ingress from a namespace on one named port", one(
			Policy("x", "y-named-80", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: serve-80-tcp}]}]"),
			func(f, t string, p Port) bool { return NsOf(t) != "x" || (NsOf(f) == "y" && p == tcp80) })},
		{"egress on one named port", one(
			Policy("x", "egress-named-80", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}]"),
			func(f, t string, p Port) bool { return NsOf(f) != "x" || p == tcp80 })},
		{"policy updated from allow-all to deny-all", []Step{
			{Policies: fixed(Policy("x", "changing", "  podSelector: {}\n  ingress: [{}]")), Want: AllowAll},
			{Policies: fixed(Policy("x", "changing", "  podSelector: {}\n  policyTypes: [Ingress]")),
				Want: func(f, t string, _ Port) bool { return NsOf(t) != "x" }},
		}},
		{"ingress from an updated namespace", []Step{
			{Policies: fixed(Policy("x", "from-team", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]")),
				Want: func(f, t string, _ Port) bool { return !isA(t) }},
			{Label: &Label{Namespace: "y", Labels: map[string]string{"ns": "y", "team": "blue"}},
				Want: func(f, t string, _ Port) bool { return !isA(t) || NsOf(f) == "y" }},
			{Label: &Label{Namespace: "y", Labels: map[string]string{"ns": "y"}},
				Want: func(f, t string, _ Port) bool { return !isA(t) }},
		}},
		{"ingress from an updated pod", []Step{
			{Policies: fixed(Policy("x", "from-updated", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b, state: updated}}}]}]")),
				Want: func(f, t string, _ Port) bool { return !isA(t) }},
			relabelPod("x", "b", map[string]string{"pod": "b", "state": "updated"},
				func(f, t string, _ Port) bool { return !isA(t) || f == "x/b" }),
			relabelPod("x", "b", map[string]string{"pod": "b"},
				func(f, t string, _ Port) bool { return !isA(t) }),
		}},
		{"deny ingress to an updated pod", []Step{
			{Policies: fixed(Policy("x", "isolate", "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]")), Want: AllowAll},
			relabelPod("x", "a", map[string]string{"pod": "a", "target": "isolated"},
				func(f, t string, _ Port) bool { return !isA(t) }),
			relabelPod("x", "a", map[string]string{"pod": "a"}, AllowAll),
		}},
		{"ingress and egress together", one(
			Policy("x", "both", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool {
				if isA(t) {
					return f == "x/b"
				}
				return !isA(f) || NsOf(t) == "y"
			})},
		{"egress deny on the client even when the server allows", one(
			Policy("x", "a-no-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]")+
				Policy("y", "allow-all", "  podSelector: {}\n  ingress: [{}]"),
			func(f, t string, _ Port) bool { return !isA(f) })},
		{"egress to a pod in another namespace by both selectors", one(
			Policy("x", "to-y-a", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]"),
			func(f, t string, _ Port) bool { return !isA(f) || t == "y/a" })},
		{"ingress on any port of one protocol", one(
			Policy("x", "tcp-only", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: TCP}]}]"),
			func(f, t string, p Port) bool { return !isA(t) || p.Proto == "tcp" })},
		{"UDP policy does not allow TCP", one(
			Policy("x", "udp-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: 81}]}]"),
			func(f, t string, p Port) bool { return !isA(t) || p == Port{"udp", 81} })},
		{"SCTP policy is not treated as TCP", one(
			Policy("x", "sctp-80", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: SCTP, port: 80}]}]"),
			func(f, t string, _ Port) bool { return !isA(t) })},
		{"ingress allow-all takes precedence", one(
			Policy("x", "only-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]")+
				Policy("x", "all", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]"),
			AllowAll)},
		{"egress allow-all takes precedence", one(
			Policy("x", "only-81", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 81}]}]")+
				Policy("x", "all", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{}]"),
			AllowAll)},
		{"deleted policy stops enforcing", []Step{
			{Policies: fixed(Policy("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")),
				Want: func(f, t string, _ Port) bool { return NsOf(t) != "x" && NsOf(f) != "x" }},
			{DeleteAll: true, Want: AllowAll},
		}},
		{"egress to a CIDR", []Step{{
			Policies: func(ips map[string]string) string {
				return Policy("x", "to-cidr", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: "+host(ips["y/b"])+"}}]}]")
			},
			Want: func(f, t string, _ Port) bool { return !isA(f) || t == "y/b" }}}},
		{"egress to a CIDR with except", []Step{{
			Policies: func(ips map[string]string) string {
				return Policy("x", "cidr-except", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: "+covering(ips)+", except: ["+host(ips["y/b"])+"]}}]}]")
			},
			Want: func(f, t string, _ Port) bool { return !isA(f) || t != "y/b" }}}},
		{"an IP in both CIDR and except, allowed by another policy", []Step{{
			Policies: func(ips map[string]string) string {
				return Policy("x", "cidr-except", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: "+covering(ips)+", except: ["+host(ips["y/b"])+"]}}]}]") +
					Policy("x", "cidr-exact", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: "+host(ips["y/b"])+"}}]}]")
			},
			Want: AllowAll}}},
		{"ingress from a CIDR", []Step{{
			Policies: func(ips map[string]string) string {
				return Policy("x", "from-cidr", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: "+host(ips["z/c"])+"}}]}]")
			},
			Want: func(f, t string, _ Port) bool { return !isA(t) || f == "z/c" }}}},
		{"ingress and egress controlled independently", one(
			Policy("x", "a-no-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]")+
				Policy("x", "b-no-ingress", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]"),
			func(f, t string, _ Port) bool { return !isA(f) && t != "x/b" })},
		{"endPort range", one(
			Policy("x", "range", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 81, endPort: 90, protocol: TCP}]}]"),
			func(f, t string, p Port) bool { return !isA(t) || (NsOf(f) == "y" && p == Port{"tcp", 81}) })},
		{"endPort range covering both ports, UDP", one(
			Policy("x", "range-udp", "  podSelector: {}\n  ingress: [{ports: [{port: 79, endPort: 81, protocol: UDP}]}]"),
			func(f, t string, p Port) bool { return NsOf(t) != "x" || p.Proto == "udp" })},
		{"egress to a namespace", one(
			Policy("x", "to-z", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"),
			func(f, t string, _ Port) bool { return NsOf(f) != "x" || NsOf(t) == "z" })},
	}
}
