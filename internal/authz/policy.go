// Package authz evaluates Istio's AuthorizationPolicy for one workload:
// the policies that apply to it are compiled once per config into an
// immutable Engine, and each request (or TCP connection) is decided over a
// small Request view, so the same matcher serves whichever request path the
// proxy runs. It is pure: no I/O, no clock.
//
// Semantics, as Istio documents them: CUSTOM is refused at compile time;
// DENY policies are evaluated first and any match denies; then, if any
// ALLOW policy applies to the workload, the request must match one of
// them; with none, it is allowed. AUDIT policies never change the decision;
// their matches are reported. A policy in dry-run (the annotation
// istio.io/dry-run: "true") is evaluated and reported, never enforced.
// Rules are ORed; within a rule, from, to and when are ANDed; within from
// (and to) the entries are ORed; within an entry, fields are ANDed and a
// field's values ORed; notX fields match when none of their values does.
// For a TCP connection, a rule that uses an HTTP-only field matches
// nothing.
package authz

// Action is what a matching policy does.
type Action string

// The actions.
const (
	Allow  Action = "ALLOW"
	Deny   Action = "DENY"
	Audit  Action = "AUDIT"
	Custom Action = "CUSTOM"
)

// Policy is an AuthorizationPolicy as written (security.istio.io/v1 and
// v1beta1, security.trellis.io/v1): its name, namespace, dry-run
// annotation and spec.
type Policy struct {
	Namespace, Name string
	DryRun          bool
	Spec            Spec
}

// Spec is the policy's spec, in Istio's field names.
type Spec struct {
	Selector   *Selector   `json:"selector,omitempty"`
	TargetRefs []TargetRef `json:"targetRefs,omitempty"`
	Action     Action      `json:"action,omitempty"`
	Rules      []Rule      `json:"rules,omitempty"`
	// Provider is CUSTOM's extension provider, refused.
	Provider map[string]any `json:"provider,omitempty"`
}

// Selector picks workloads by labels.
type Selector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// TargetRef names a Service the policy attaches to.
type TargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// Rule matches requests.
type Rule struct {
	From []From      `json:"from,omitempty"`
	To   []To        `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// From holds one source.
type From struct {
	Source Source `json:"source"`
}

// Source is who sends.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
}

// To holds one operation.
type To struct {
	Operation Operation `json:"operation"`
}

// Operation is what is asked.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is one when entry: a key and the values it must (or must
// not) have.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}
