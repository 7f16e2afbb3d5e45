package catalog

// KindAuthorizationPolicy is the Istio-shaped AuthorizationPolicy kind.
const KindAuthorizationPolicy Kind = "AuthorizationPolicy"

// AuthorizationPolicy is an Istio AuthorizationPolicy as written
// (security.istio.io/v1 and v1beta1, security.trellis.io/v1): which
// requests a workload's sidecar lets through. internal/authz compiles and
// evaluates it; the types carry Istio's JSON field names so manifests and
// custom resources decode into them unchanged.
type AuthorizationPolicy struct {
	Meta
	// DryRun: the annotation istio.io/dry-run (or trellis.io/dry-run) is
	// "true": decisions are recorded, never enforced.
	DryRun bool
	Spec   AuthorizationSpec
}

// AuthorizationAction is what a matching policy does.
type AuthorizationAction string

// The actions, as Istio spells them.
const (
	AuthorizationAllow  AuthorizationAction = "ALLOW"
	AuthorizationDeny   AuthorizationAction = "DENY"
	AuthorizationAudit  AuthorizationAction = "AUDIT"
	AuthorizationCustom AuthorizationAction = "CUSTOM"
)

// AuthorizationSpec is the policy's spec.
type AuthorizationSpec struct {
	Selector   *WorkloadSelector   `json:"selector,omitempty"`
	TargetRefs []PolicyTargetRef   `json:"targetRefs,omitempty"`
	Action     AuthorizationAction `json:"action,omitempty"`
	Rules      []AuthorizationRule `json:"rules,omitempty"`
	// Provider is CUSTOM's extension provider, refused.
	Provider map[string]any `json:"provider,omitempty"`
}

// WorkloadSelector picks workloads by labels.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// PolicyTargetRef names a Service a policy attaches to.
type PolicyTargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// AuthorizationRule matches requests.
type AuthorizationRule struct {
	From []AuthorizationFrom      `json:"from,omitempty"`
	To   []AuthorizationTo        `json:"to,omitempty"`
	When []AuthorizationCondition `json:"when,omitempty"`
}

// AuthorizationFrom holds one source.
type AuthorizationFrom struct {
	Source AuthorizationSource `json:"source"`
}

// AuthorizationSource is who sends.
type AuthorizationSource struct {
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

// AuthorizationTo holds one operation.
type AuthorizationTo struct {
	Operation AuthorizationOperation `json:"operation"`
}

// AuthorizationOperation is what is asked.
type AuthorizationOperation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// AuthorizationCondition is one when entry: a key and the values it must
// (or must not) have.
type AuthorizationCondition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}
