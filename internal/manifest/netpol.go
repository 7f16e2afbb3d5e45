package manifest

import (
	"fmt"
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

func decodeNetworkPolicy(doc []byte) (catalog.Ref, any, error) {
	var o networkingv1.NetworkPolicy
	if err := strict(doc, &o, "NetworkPolicy"); err != nil {
		return catalog.Ref{}, nil, err
	}
	np, err := NetworkPolicy(&o)
	ref := catalog.Ref{Kind: catalog.KindNetworkPolicy, Namespace: o.Namespace, Name: o.Name}
	if err != nil {
		return ref, nil, err
	}
	return ref, np, nil
}

// NetworkPolicy converts a networking.k8s.io/v1 NetworkPolicy (from a
// manifest, or as an API server holds it) to the catalog's form, with the
// checks one-host mode makes: ipBlocks are IPv4.
func NetworkPolicy(o *networkingv1.NetworkPolicy) (*catalog.NetworkPolicy, error) {
	np := &catalog.NetworkPolicy{Meta: meta(o.ObjectMeta, true)}
	var err error
	if np.PodSelector, err = selector(o.Spec.PodSelector, "spec.podSelector"); err != nil {
		return nil, err
	}
	// policyTypes defaulting, as the API server does.
	if len(o.Spec.PolicyTypes) == 0 {
		np.Ingress, np.Egress = true, len(o.Spec.Egress) > 0
	}
	for _, t := range o.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			np.Ingress = true
		case networkingv1.PolicyTypeEgress:
			np.Egress = true
		default:
			return nil, fmt.Errorf("spec.policyTypes: %q: use Ingress or Egress", t)
		}
	}
	for i, r := range o.Spec.Ingress {
		rule, err := policyRule(r.From, r.Ports, fmt.Sprintf("spec.ingress[%d]", i), "from")
		if err != nil {
			return nil, err
		}
		np.IngressRules = append(np.IngressRules, rule)
	}
	for i, r := range o.Spec.Egress {
		rule, err := policyRule(r.To, r.Ports, fmt.Sprintf("spec.egress[%d]", i), "to")
		if err != nil {
			return nil, err
		}
		np.EgressRules = append(np.EgressRules, rule)
	}
	return np, nil
}

func policyRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, field, peerField string) (catalog.NetworkPolicyRule, error) {
	var rule catalog.NetworkPolicyRule
	for i, p := range peers {
		f := fmt.Sprintf("%s.%s[%d]", field, peerField, i)
		peer, err := policyPeer(p, f)
		if err != nil {
			return rule, err
		}
		rule.Peers = append(rule.Peers, peer)
	}
	for i, p := range ports {
		f := fmt.Sprintf("%s.ports[%d]", field, i)
		port, err := policyPort(p, f)
		if err != nil {
			return rule, err
		}
		rule.Ports = append(rule.Ports, port)
	}
	return rule, nil
}

func policyPeer(p networkingv1.NetworkPolicyPeer, field string) (catalog.NetworkPolicyPeer, error) {
	var out catalog.NetworkPolicyPeer
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return out, fmt.Errorf("%s: ipBlock cannot be combined with podSelector or namespaceSelector", field)
		}
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return out, fmt.Errorf("%s.ipBlock.cidr %q is not a valid CIDR (for example 10.0.0.0/24)", field, p.IPBlock.CIDR)
		}
		if !cidr.Addr().Is4() {
			return out, fmt.Errorf("%s.ipBlock.cidr %s: only IPv4 is supported in one-host mode", field, cidr)
		}
		block := &catalog.IPBlock{CIDR: cidr.Masked()}
		for j, e := range p.IPBlock.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil {
				return out, fmt.Errorf("%s.ipBlock.except[%d] %q is not a valid CIDR", field, j, e)
			}
			if !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
				return out, fmt.Errorf("%s.ipBlock.except[%d] %s is not inside cidr %s", field, j, ex, cidr)
			}
			block.Except = append(block.Except, ex.Masked())
		}
		out.IPBlock = block
		return out, nil
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return out, fmt.Errorf("%s: set podSelector, namespaceSelector or ipBlock", field)
	}
	if p.PodSelector != nil {
		s, err := selector(*p.PodSelector, field+".podSelector")
		if err != nil {
			return out, err
		}
		out.PodSelector = &s
	}
	if p.NamespaceSelector != nil {
		s, err := selector(*p.NamespaceSelector, field+".namespaceSelector")
		if err != nil {
			return out, err
		}
		out.NamespaceSelector = &s
	}
	return out, nil
}

func policyPort(p networkingv1.NetworkPolicyPort, field string) (catalog.NetworkPolicyPort, error) {
	out := catalog.NetworkPolicyPort{Protocol: catalog.TCP}
	if p.Protocol != nil {
		out.Protocol = catalog.Protocol(*p.Protocol)
	}
	switch out.Protocol {
	case catalog.TCP, catalog.UDP, catalog.SCTP:
	default:
		return out, fmt.Errorf("%s.protocol %q: use TCP, UDP or SCTP", field, out.Protocol)
	}
	if p.Port != nil {
		if p.Port.Type == intstr.String {
			if errs := validation.IsValidPortName(p.Port.StrVal); len(errs) > 0 {
				return out, fmt.Errorf("%s.port %q: %s", field, p.Port.StrVal, errs[0])
			}
			out.Name = p.Port.StrVal
		} else {
			if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
				return out, fmt.Errorf("%s.port %d is out of range 1-65535", field, p.Port.IntVal)
			}
			out.Port = p.Port.IntVal
		}
	}
	if p.EndPort != nil {
		switch {
		case out.Port == 0:
			return out, fmt.Errorf("%s.endPort needs a numeric port", field)
		case *p.EndPort < out.Port || *p.EndPort > 65535:
			return out, fmt.Errorf("%s.endPort %d must be between port %d and 65535", field, *p.EndPort, out.Port)
		}
		out.EndPort = *p.EndPort
	}
	return out, nil
}

func selector(s metav1.LabelSelector, field string) (catalog.LabelSelector, error) {
	out := catalog.LabelSelector{MatchLabels: s.MatchLabels}
	if err := checkLabels(s.MatchLabels, field+".matchLabels"); err != nil {
		return out, err
	}
	for i, e := range s.MatchExpressions {
		f := fmt.Sprintf("%s.matchExpressions[%d]", field, i)
		if errs := validation.IsQualifiedName(e.Key); len(errs) > 0 {
			return out, fmt.Errorf("%s.key %q: %s", f, e.Key, errs[0])
		}
		op := string(e.Operator)
		switch op {
		case catalog.OpIn, catalog.OpNotIn:
			if len(e.Values) == 0 {
				return out, fmt.Errorf("%s: operator %s needs at least one value", f, op)
			}
		case catalog.OpExists, catalog.OpDoesNotExist:
			if len(e.Values) > 0 {
				return out, fmt.Errorf("%s: operator %s takes no values", f, op)
			}
		default:
			return out, fmt.Errorf("%s: operator %q: use In, NotIn, Exists or DoesNotExist", f, op)
		}
		out.MatchExpressions = append(out.MatchExpressions, catalog.LabelExpression{Key: e.Key, Operator: op, Values: e.Values})
	}
	return out, nil
}

// checkPolicyPortNames fails when a named port of a policy matches no
// container port of any workload in the set: almost certainly a typo, and
// one that would silently allow nothing.
func checkPolicyPortNames(s *Set) []error {
	names := map[string]bool{}
	for _, w := range workloads(s) {
		for _, c := range w.spec.Containers {
			for _, p := range c.Ports {
				if p.Name != "" {
					names[p.Name+"/"+string(p.Protocol)] = true
				}
			}
		}
	}
	var errs []error
	for _, np := range s.NetworkPolicies() {
		ref := catalog.Ref{Kind: catalog.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
		for dir, rules := range map[string][]catalog.NetworkPolicyRule{"ingress": np.IngressRules, "egress": np.EgressRules} {
			for i, r := range rules {
				for j, p := range r.Ports {
					if p.Name != "" && !names[p.Name+"/"+string(p.Protocol)] {
						errs = append(errs, fmt.Errorf("%s: %s: spec.%s[%d].ports[%d]: port name %q matches no %s container port of any pod; use a declared port name or a number",
							s.Origin(ref), ref, dir, i, j, p.Name, p.Protocol))
					}
				}
			}
		}
	}
	return errs
}
