package catalog

import (
	"net/netip"
	"time"
)

// Snapshot is one version of the mesh's state as a discovery source sees
// it: what the control plane computes every proxy's configuration from.
// A Snapshot is immutable once published: readers share it without locks,
// and a change makes a new one with a higher Version.
//
// Sources fill it from whatever they watch (the one-host runtime's
// registry, Kubernetes informers); nothing in it is specific to one of
// them.
type Snapshot struct {
	// Version grows with every change the source publishes.
	Version uint64
	// Time is when the source saw the change; convergence is measured
	// from it.
	Time                time.Time
	Namespaces          []*Namespace
	Services            []*Service // ClusterIP set
	Pods                []*RunningPod
	PeerAuthentications []*PeerAuthentication
	// AuthorizationPolicies as written; each passed authz.Check.
	AuthorizationPolicies []*AuthorizationPolicy
	// RequestAuthentications as written; each passed authn.Check.
	RequestAuthentications []*RequestAuthentication
	// HTTPRoutes and GRPCRoutes as written, valid or not: internal/route
	// decides what each changes and writes its status. Sorted by
	// namespace and name.
	HTTPRoutes []*HTTPRoute `json:",omitempty"`
	GRPCRoutes []*GRPCRoute `json:",omitempty"`
	// DestinationRules as written; each passed the manifest's checks (a
	// host that names a Service, the supported fields only). Sorted by
	// namespace and name.
	DestinationRules []*DestinationRule `json:",omitempty"`
	// VirtualServices as written, valid or not, as routes are:
	// internal/route translates each into the routes' model and writes
	// its status. Sorted by namespace and name.
	VirtualServices []*VirtualService `json:",omitempty"`
	// JWKS are the key sets the control plane fetched for the jwksUris
	// of RequestAuthentications, by URI; a source leaves it empty.
	JWKS map[string][]byte `json:",omitempty"`
}

// RunningPod is a pod that exists, with what the runtime observed of it.
type RunningPod struct {
	Pod *Pod
	// UID names this run of the pod: a pod deleted and created again under
	// the same name has a new one. Certificates name the pod they were
	// issued to by it.
	UID string
	// IP is the pod's address; zero before it has one.
	IP netip.Addr
	// Ready: every container is ready and the pod is not terminating, so
	// it is an endpoint of the services that select it.
	Ready bool
	// Sidecar: the pod runs a Trellis proxy, so peers reach it over mTLS
	// and it receives a ProxyConfig.
	Sidecar bool
	// BootstrapTokenSHA256 is the hex SHA-256 of the one-time token the
	// runtime gave this run of the pod's sidecar, which it trades for its
	// first certificate. Empty when the runtime gave none.
	BootstrapTokenSHA256 string
}

// Key is "namespace/name".
func (p *RunningPod) Key() string { return p.Pod.Namespace + "/" + p.Pod.Name }

// Pod returns the running pod namespace/name, or nil.
func (s *Snapshot) Pod(namespace, name string) *RunningPod {
	for _, p := range s.Pods {
		if p.Pod.Namespace == namespace && p.Pod.Name == name {
			return p
		}
	}
	return nil
}

// Namespace returns the namespace named name, or nil.
func (s *Snapshot) Namespace(name string) *Namespace {
	for _, ns := range s.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	return nil
}
