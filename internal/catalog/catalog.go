// Package catalog is Trellis's Kubernetes-shaped but Kubernetes-free model of a
// mesh: namespaces, service accounts, workloads, services and their ports.
//
// It is a leaf: it imports nothing from the project and no Kubernetes library.
// Sources (the one-host manifest reader, later the Kubernetes informers) turn
// their input into these types at once; everything downstream (the one-host
// runtime, proxy configuration, policy compilers) reads only these types.
// Values are plain data and are treated as immutable once built.
package catalog

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Kind names an object type. The strings are the Kubernetes kinds.
type Kind string

// The kinds the catalog models.
const (
	KindNamespace      Kind = "Namespace"
	KindServiceAccount Kind = "ServiceAccount"
	KindPod            Kind = "Pod"
	KindDeployment     Kind = "Deployment"
	KindService        Kind = "Service"
)

// Ref identifies one object. Namespace is empty for cluster-scoped kinds.
type Ref struct {
	Kind      Kind
	Namespace string
	Name      string
}

// String formats a Ref the way error messages quote it: "Service db/alpha",
// or "Namespace db" for cluster-scoped kinds.
func (r Ref) String() string {
	if r.Namespace == "" {
		return string(r.Kind) + " " + r.Name
	}
	return string(r.Kind) + " " + r.Namespace + "/" + r.Name
}

// Meta is the metadata every object carries.
type Meta struct {
	Name        string
	Namespace   string // empty for Namespace objects
	Labels      map[string]string
	Annotations map[string]string
	// CreationTimestamp is when the API server created the object; zero
	// when the source has none (a manifest file). Route precedence breaks
	// ties by it.
	CreationTimestamp time.Time `json:",omitzero"`
	// Generation is the API server's metadata.generation; zero when the
	// source has none. Status conditions report it as observedGeneration.
	Generation int64 `json:",omitzero"`
}

// ObjectMeta is m, for code generic over the objects that embed it.
func (m *Meta) ObjectMeta() *Meta { return m }

// Namespace groups objects; its labels drive injection and policy.
type Namespace struct {
	Meta
}

// ServiceAccount is a workload identity within a namespace.
type ServiceAccount struct {
	Meta
}

// Protocol is a transport protocol, as Kubernetes spells it.
type Protocol string

// Transport protocols.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// RestartPolicy says when a container that exited is started again.
type RestartPolicy string

// Restart policies, as Kubernetes names them. The zero value means Always.
const (
	RestartAlways    RestartPolicy = "Always"
	RestartOnFailure RestartPolicy = "OnFailure"
	RestartNever     RestartPolicy = "Never"
)

// PodSpec is what a workload runs.
type PodSpec struct {
	ServiceAccount string // "default" when the manifest names none
	RestartPolicy  RestartPolicy
	// TerminationGrace is how long a container gets between SIGTERM and
	// SIGKILL when its pod is removed.
	TerminationGrace time.Duration
	Containers       []Container
}

// Container is one process of a pod.
type Container struct {
	Name       string
	Image      string   // recorded only: one-host mode runs Command on the host
	Command    []string // command then args, already joined
	Env        []EnvVar
	WorkingDir string // empty: the runtime's choice
	Ports      []ContainerPort
	Readiness  *Probe // nil: ready while running
	Security   Security
}

// Security is a container's securityContext, the pod's and the container's
// merged (the container's fields win).
type Security struct {
	// RunAsUser and RunAsGroup are the process's uid and gid inside the
	// pod; nil: 0 (root inside the pod, which is no one on the host).
	RunAsUser, RunAsGroup *int64
	// SupplementalGroups are extra gids of the process (the pod's).
	SupplementalGroups []int64
	// Capabilities are what the process keeps, by name without "CAP_"
	// ("NET_BIND_SERVICE"): capabilities.add less capabilities.drop. The
	// default is none.
	Capabilities []string
	// ReadOnlyRootFilesystem leaves the container no writable path.
	ReadOnlyRootFilesystem bool
	// AllowPrivilegeEscalation lets setuid binaries and file capabilities
	// raise privileges (no_new_privs unset). Default false.
	AllowPrivilegeEscalation bool
}

// UID returns the process's uid inside the pod.
func (s Security) UID() int64 { return deref(s.RunAsUser) }

// GID returns the process's gid inside the pod.
func (s Security) GID() int64 { return deref(s.RunAsGroup) }

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// MaxPodID is the highest uid or gid a pod's processes may use: each pod
// has 65536 ids of its own.
const MaxPodID = 65535

// CapabilityNumbers are the Linux capabilities by name (without "CAP_"),
// as the kernel numbers them.
var CapabilityNumbers = map[string]int{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
	"KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
	"NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
	"IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
	"SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
	"SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28,
	"AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32,
	"MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
	"PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

// EnvVar is one environment variable: a literal Value, or, when FieldPath
// is set, a field of the pod resolved when the container starts
// ("metadata.name", "metadata.namespace", "status.podIP",
// "spec.serviceAccountName").
type EnvVar struct {
	Name      string
	Value     string
	FieldPath string
}

// ContainerPort is a port a container declares it listens on.
type ContainerPort struct {
	Name     string // may be empty
	Port     int32
	Protocol Protocol
}

// ProbeHandler is how a probe checks a container. Exactly one field is set.
type ProbeHandler struct {
	HTTPGet   *HTTPGetAction
	TCPSocket *TCPSocketAction
	Exec      []string // command run inside the pod
}

// HTTPGetAction succeeds on a status in [200, 400).
type HTTPGetAction struct {
	Path string
	Port int32 // resolved from a named port at load time
}

// TCPSocketAction succeeds when a TCP connection opens.
type TCPSocketAction struct {
	Port int32
}

// Probe is a readiness probe with Kubernetes timing semantics.
type Probe struct {
	ProbeHandler
	InitialDelay     time.Duration
	Period           time.Duration
	Timeout          time.Duration
	SuccessThreshold int
	FailureThreshold int
}

// Pod is one workload instance.
type Pod struct {
	Meta
	Spec PodSpec
	// Owner is the name of the Deployment that created the pod, empty for
	// pods declared directly.
	Owner string
}

// Deployment keeps Replicas pods built from Template running.
type Deployment struct {
	Meta
	Replicas int
	Selector map[string]string
	Template PodTemplate
}

// PodTemplate is the part of a Deployment that pods are made from.
type PodTemplate struct {
	Labels      map[string]string
	Annotations map[string]string
	Spec        PodSpec
}

// Service is a named set of pods behind a virtual IP.
type Service struct {
	Meta
	Selector map[string]string // nil: no automatic endpoints
	Ports    []ServicePort
	// ClusterIP is assigned by the runtime; zero until then.
	ClusterIP netip.Addr
	// Endpoints of a Service without a selector: the addresses its
	// EndpointSlices list (kept by whoever manages them, on Kubernetes).
	// Each may be a meshed pod's address or any other.
	Endpoints []ServiceEndpoint `json:",omitempty"`
}

// ServiceEndpoint is one listed address of a Service without a selector.
type ServiceEndpoint struct {
	IP    netip.Addr
	Ready bool
	// Ports are the port on IP of each service port, by the service port's
	// name.
	Ports map[string]int32
}

// ServicePort maps a service port to a target port on the selected pods.
type ServicePort struct {
	Name        string
	Protocol    Protocol
	Port        int32
	AppProtocol string // empty when not declared
	// TargetPort is the port number on the pod; when TargetPortName is set
	// it is resolved per pod from the pod's container ports.
	TargetPort     int32
	TargetPortName string
}

// ResolveTargetPort returns the pod port a service port reaches on pod p, and
// false when a named target port matches none of p's container ports.
func (sp ServicePort) ResolveTargetPort(p *Pod) (int32, bool) {
	if sp.TargetPortName == "" {
		return sp.TargetPort, true
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == sp.TargetPortName && cp.Protocol == sp.Protocol {
				return cp.Port, true
			}
		}
	}
	return 0, false
}

// SelectorMatches reports whether every key/value of sel is in labels. An
// empty selector matches nothing, as a Service selector does.
func SelectorMatches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// FormatLabels renders labels as "k=v,k2=v2" in key order, or "<none>".
func FormatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + labels[k])
	}
	return b.String()
}

// AnnotationInboundToLocalhost, "true" on a pod, makes its sidecar reach
// the app on 127.0.0.1 instead of the pod's address (for an app that
// listens on loopback only, which the mesh then reaches too).
const AnnotationInboundToLocalhost = "trellis.io/inbound-to-localhost"

// AnnotationExcludeOutboundIPRanges (Istio's) lists the IPv4 ranges a
// pod's outbound traffic reaches without its sidecar, comma-separated
// (e.g. "10.0.0.0/8,192.168.1.1/32").
const AnnotationExcludeOutboundIPRanges = "traffic.sidecar.istio.io/excludeOutboundIPRanges"

// MaxExcludedRanges bounds AnnotationExcludeOutboundIPRanges: each range
// is a rule every new outbound connection passes.
const MaxExcludedRanges = 64

// ParseIPRanges reads an AnnotationExcludeOutboundIPRanges value: IPv4
// CIDRs (a bare address is one /32), at most MaxExcludedRanges. The error
// names the entry and the fix.
func ParseIPRanges(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not an IPv4 range: write it as 10.0.0.0/8 or 192.168.1.1", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("%q: only IPv4 ranges are supported (the capture rules are IPv4)", f)
		}
		out = append(out, p.Masked())
	}
	if len(out) > MaxExcludedRanges {
		return nil, fmt.Errorf("%d ranges, more than %d: merge them into wider ones", len(out), MaxExcludedRanges)
	}
	return out, nil
}

// KindPeerAuthentication is the Istio-shaped PeerAuthentication kind.
const KindPeerAuthentication Kind = "PeerAuthentication"

// MTLSMode is a PeerAuthentication mode.
type MTLSMode string

// RootNamespaces hold mesh-wide policy: Trellis's own, and Istio's (so a
// policy written for Istio means the same here). When both set a mode,
// Trellis's wins.
var RootNamespaces = []string{"trellis-system", "istio-system"}

// Modes, as Istio spells them. UNSET inherits from the broader policy.
const (
	MTLSUnset      MTLSMode = "UNSET"
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSStrict     MTLSMode = "STRICT"
)

// PeerAuthentication says whether a workload's sidecar accepts plaintext.
// Without Selector it covers its whole namespace; with one, the selected
// workloads, overriding the namespace's. PortModes override per app port.
// One without Selector in a root namespace covers the whole mesh, below
// every namespace's own.
type PeerAuthentication struct {
	Meta
	Selector  map[string]string // nil: the whole namespace
	Mode      MTLSMode
	PortModes map[uint32]MTLSMode
}
