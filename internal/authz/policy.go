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

import "github.com/trellis-mesh/trellis/internal/catalog"

// Action is what a matching policy does.
type Action = catalog.AuthorizationAction

// The actions.
const (
	Allow  = catalog.AuthorizationAllow
	Deny   = catalog.AuthorizationDeny
	Audit  = catalog.AuthorizationAudit
	Custom = catalog.AuthorizationCustom
)

// Policy is one AuthorizationPolicy: its name, namespace, dry-run
// annotation and spec.
type Policy struct {
	Namespace, Name string
	DryRun          bool
	Spec            Spec
}

// The spec's parts, in Istio's field names (see catalog).
type (
	Spec      = catalog.AuthorizationSpec
	Selector  = catalog.WorkloadSelector
	TargetRef = catalog.PolicyTargetRef
	Rule      = catalog.AuthorizationRule
	From      = catalog.AuthorizationFrom
	Source    = catalog.AuthorizationSource
	To        = catalog.AuthorizationTo
	Operation = catalog.AuthorizationOperation
	Condition = catalog.AuthorizationCondition
)

// FromCatalog is the policy as the engine takes it.
func FromCatalog(p *catalog.AuthorizationPolicy) Policy {
	return Policy{Namespace: p.Namespace, Name: p.Name, DryRun: p.DryRun, Spec: p.Spec}
}
