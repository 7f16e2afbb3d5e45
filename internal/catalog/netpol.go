package catalog

import "net/netip"

// KindNetworkPolicy is the Kubernetes NetworkPolicy kind.
const KindNetworkPolicy Kind = "NetworkPolicy"

// LabelSelector selects objects by labels, with Kubernetes semantics: every
// MatchLabels pair and every expression must hold. The zero value selects
// everything.
type LabelSelector struct {
	MatchLabels      map[string]string
	MatchExpressions []LabelExpression
}

// Selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// LabelExpression is one requirement of a LabelSelector.
type LabelExpression struct {
	Key      string
	Operator string // OpIn, OpNotIn, OpExists or OpDoesNotExist
	Values   []string
}

// Matches reports whether labels satisfy s.
func (s LabelSelector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, ok := labels[e.Key]
		switch e.Operator {
		case OpIn:
			if !ok || !contains(e.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && contains(e.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// NetworkPolicy is a Kubernetes networking.k8s.io/v1 NetworkPolicy.
type NetworkPolicy struct {
	Meta
	PodSelector LabelSelector
	// Ingress and Egress say which directions the policy isolates, after
	// policyTypes defaulting: Ingress always unless policyTypes says
	// otherwise, Egress when policyTypes names it or egress rules exist.
	Ingress, Egress bool
	IngressRules    []NetworkPolicyRule
	EgressRules     []NetworkPolicyRule
}

// NetworkPolicyRule allows traffic from (ingress) or to (egress) any of
// Peers on any of Ports. Nil Peers means every peer; nil Ports every port.
type NetworkPolicyRule struct {
	Peers []NetworkPolicyPeer
	Ports []NetworkPolicyPort
}

// NetworkPolicyPeer is one peer clause. Either IPBlock is set, or one or
// both selectors: PodSelector alone selects pods in the policy's namespace;
// NamespaceSelector alone every pod in the selected namespaces; both, the
// selected pods in the selected namespaces.
type NetworkPolicyPeer struct {
	PodSelector       *LabelSelector
	NamespaceSelector *LabelSelector
	IPBlock           *IPBlock
}

// IPBlock is a CIDR minus exceptions.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// NetworkPolicyPort is a protocol and a port, a port range (Port..EndPort)
// or a named port resolved on each destination pod. Port 0 and no name
// mean every port of the protocol.
type NetworkPolicyPort struct {
	Protocol Protocol
	Port     int32
	Name     string
	EndPort  int32 // 0: just Port
}
