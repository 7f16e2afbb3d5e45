// Package inject adds Trellis's sidecar to a Kubernetes pod: the redirect
// init step, the proxy as a native sidecar, its identity volume and the
// rewritten probes. The control plane's admission webhook and
// `trellis inject` both call Pod; it reads only the pod and Config, so the
// same pod always comes out the same.
package inject

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Names of what injection adds.
const (
	ProxyContainer = "trellis-proxy" // the native sidecar
	InitContainer  = "trellis-init"  // installs the redirect rules
	IdentityVolume = "trellis-identity"
	identityDir    = "/var/run/trellis"
	// StatusAnnotation marks an injected pod.
	StatusAnnotation = "sidecar.trellis.io/status"
	// RootAnnotation carries the mesh's roots (PEM) into the pod; the
	// identity volume projects it as a file beside the token, and the
	// sidecar trusts the control plane with it on its first connection.
	RootAnnotation = "sidecar.trellis.io/ca-root"
	// ProbesEnv holds the app's original probes (JSON), which the sidecar
	// runs on the kubelet's behalf at /app-health/CONTAINER/KIND.
	ProbesEnv = "TRELLIS_APP_PROBES"
	// HealthPort is the sidecar's readiness and app-health port.
	HealthPort = 15021
	// MetricsPort serves /stats/prometheus.
	MetricsPort = 15020
)

// The annotations and labels injection reads (Istio's, so manifests
// written for Istio mean the same here).
const (
	annInject           = "sidecar.istio.io/inject"
	annTrellisInject    = "trellis.io/inject"
	annExcludeInbound   = "traffic.sidecar.istio.io/excludeInboundPorts"
	annExcludeOutbound  = "traffic.sidecar.istio.io/excludeOutboundPorts"
	annDefaultContainer = "kubectl.kubernetes.io/default-container"
)

// Config is what injection needs to know about the mesh.
type Config struct {
	// ProxyImage runs both the init step and the sidecar.
	ProxyImage string
	// PullPolicy of the proxy image; empty: the cluster's default.
	PullPolicy corev1.PullPolicy
	// ControlPlane is the control plane's gRPC address (host:15012).
	ControlPlane string
	// TrustDomain of the mesh's SPIFFE IDs.
	TrustDomain string
	// RootPEM are the mesh's roots.
	RootPEM []byte
	// ProxyUID is the uid (and gid) the sidecar runs as; its traffic is
	// not captured. Default 1337.
	ProxyUID int64
	// Resources of the sidecar; zero: DefaultResources.
	Resources corev1.ResourceRequirements
	// Traces is where the sidecar sends its spans over OTLP:
	// "control-plane" (the dashboard's traces and recent requests), a
	// collector's host:port, or "" for nowhere.
	Traces string
	// TraceSampling is the percentage of requests started at the sidecar
	// that are traced (a caller's sampling decision is kept).
	TraceSampling float64
}

// DefaultResources are the sidecar's requests and limits unless the
// install says otherwise.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

// Skipped explains why Pod left a pod alone.
type Skipped struct{ Reason string }

func (s *Skipped) Error() string { return "not injected: " + s.Reason }

// workloadOf names the workload a pod being created belongs to: its
// Deployment (a ReplicaSet's pods are named DEPLOYMENT-HASH-xxxxx, the hash
// also in their pod-template-hash label), else its name, else the prefix
// of its generated name.
func workloadOf(pod *corev1.Pod) string {
	prefix := strings.TrimSuffix(pod.GenerateName, "-")
	if hash := pod.Labels["pod-template-hash"]; hash != "" {
		if name, ok := strings.CutSuffix(prefix, "-"+hash); ok {
			return name
		}
	}
	return cmp.Or(pod.Name, prefix)
}

// Pod injects the sidecar into pod, which is in namespace ns. It returns a
// *Skipped error for a pod that opts out, runs on the host network or is
// injected already (injecting twice changes nothing), and another error
// for a pod it cannot mesh as asked.
func Pod(pod *corev1.Pod, ns string, cfg Config) error {
	if v := optOut(pod); v != "" {
		return &Skipped{v}
	}
	if pod.Spec.HostNetwork {
		return &Skipped{"the pod uses the host's network"}
	}
	if _, ok := pod.Annotations[StatusAnnotation]; ok || hasContainer(pod.Spec.InitContainers, ProxyContainer) {
		return &Skipped{"the pod has a Trellis sidecar already"}
	}
	if cfg.ProxyImage == "" || cfg.ControlPlane == "" || cfg.TrustDomain == "" || len(cfg.RootPEM) == 0 {
		return errors.New("inject: the proxy image, control plane address, trust domain and roots must be configured")
	}
	if hasContainer(pod.Spec.Containers, ProxyContainer) || hasContainer(pod.Spec.Containers, InitContainer) {
		return fmt.Errorf("the pod has a container named %s or %s already; rename it", ProxyContainer, InitContainer)
	}
	uid := cfg.ProxyUID
	if uid == 0 {
		uid = 1337
	}
	for _, c := range pod.Spec.Containers {
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil && *c.SecurityContext.RunAsUser == uid {
			return fmt.Errorf("container %s runs as uid %d, the sidecar's: its traffic would bypass the mesh; use another uid", c.Name, uid)
		}
	}
	inbound, err := portList(pod.Annotations[annExcludeInbound], annExcludeInbound)
	if err != nil {
		return err
	}
	outbound, err := portList(pod.Annotations[annExcludeOutbound], annExcludeOutbound)
	if err != nil {
		return err
	}
	ranges, err := catalog.ParseIPRanges(pod.Annotations[catalog.AnnotationExcludeOutboundIPRanges])
	if err != nil {
		return fmt.Errorf("annotation %s: %w", catalog.AnnotationExcludeOutboundIPRanges, err)
	}
	containers := make([]corev1.Container, len(pod.Spec.Containers))
	for i := range containers {
		pod.Spec.Containers[i].DeepCopyInto(&containers[i])
	}
	probes, err := rewriteProbes(containers)
	if err != nil {
		return err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}

	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Spec.Containers = containers
	pod.Annotations[StatusAnnotation] = "injected"
	pod.Annotations[RootAnnotation] = string(cfg.RootPEM)
	if _, ok := pod.Annotations[annDefaultContainer]; !ok && len(pod.Spec.Containers) > 0 {
		pod.Annotations[annDefaultContainer] = pod.Spec.Containers[0].Name
	}
	for k, v := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(MetricsPort), "prometheus.io/path": "/stats/prometheus"} {
		if _, ok := pod.Annotations[k]; !ok {
			pod.Annotations[k] = v
		}
	}
	redirect := []string{"redirect", "--proxy-uid", strconv.FormatInt(uid, 10)}
	if inbound != "" {
		redirect = append(redirect, "--exclude-inbound", inbound)
	}
	if outbound != "" {
		redirect = append(redirect, "--exclude-outbound", outbound)
	}
	if len(ranges) > 0 {
		var rs []string
		for _, r := range ranges {
			rs = append(rs, r.String())
		}
		redirect = append(redirect, "--exclude-outbound-ranges", strings.Join(rs, ","))
	}
	initC := corev1.Container{
		Name: InitContainer, Image: cfg.ProxyImage, ImagePullPolicy: cfg.PullPolicy, Args: redirect,
		SecurityContext: &corev1.SecurityContext{
			// nftables in the pod's network namespace needs NET_ADMIN,
			// and nothing else: this step exits before the app starts.
			RunAsUser: ptr(int64(0)), RunAsGroup: ptr(int64(0)), RunAsNonRoot: ptr(false),
			Privileged: ptr(false), AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
	}
	res := cfg.Resources
	if len(res.Requests) == 0 && len(res.Limits) == 0 {
		res = DefaultResources()
	}
	ready := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(HealthPort)}},
		PeriodSeconds: 2, TimeoutSeconds: 3, FailureThreshold: 3, SuccessThreshold: 1}
	startup := ready.DeepCopy()
	startup.PeriodSeconds, startup.FailureThreshold = 1, 600
	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	if strings.EqualFold(pod.Annotations[catalog.AnnotationInboundToLocalhost], "true") {
		env = append(env, corev1.EnvVar{Name: "POD_IP", Value: "127.0.0.1"})
	} else {
		env = append(env, corev1.EnvVar{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}})
	}
	if len(probes) > 0 {
		data, err := json.Marshal(probes)
		if err != nil {
			return err
		}
		env = append(env, corev1.EnvVar{Name: ProbesEnv, Value: string(data)})
	}
	args := []string{
		"--control-plane", cfg.ControlPlane, "--control-plane-bundle", identityDir + "/root-cert.pem",
		"--identity", "spiffe://" + cfg.TrustDomain + "/ns/" + ns + "/sa/" + sa,
		"--pod-namespace", "$(POD_NAMESPACE)", "--pod-name", "$(POD_NAME)", "--token-file", identityDir + "/token",
		"--cluster", "Kubernetes",
	}
	if cfg.Traces != "" {
		args = append(args, "--otlp-endpoint", cfg.Traces, "--trace-sampling", strconv.FormatFloat(cfg.TraceSampling, 'f', -1, 64),
			"--trace-service", telemetry.PeerFromLabels(workloadOf(pod), ns, "", pod.Labels).CanonicalService+"."+ns)
	}
	always := corev1.ContainerRestartPolicyAlways
	proxyC := corev1.Container{
		Name: ProxyContainer, Image: cfg.ProxyImage, ImagePullPolicy: cfg.PullPolicy, RestartPolicy: &always,
		Args: args,
		Env:  env,
		Ports: []corev1.ContainerPort{
			{Name: "trellis-prom", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP},
			{Name: "trellis-health", ContainerPort: HealthPort, Protocol: corev1.ProtocolTCP},
		},
		StartupProbe: startup, ReadinessProbe: ready, Resources: res,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptr(uid), RunAsGroup: ptr(uid), RunAsNonRoot: ptr(true),
			Privileged: ptr(false), AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: IdentityVolume, MountPath: identityDir, ReadOnly: true}},
	}
	// The redirect step first, then the sidecar, then the pod's own init
	// containers: those already go through the proxy.
	pod.Spec.InitContainers = append([]corev1.Container{initC, proxyC}, pod.Spec.InitContainers...)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: IdentityVolume, VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "trellis", ExpirationSeconds: ptr(int64(3600)), Path: "token"}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "root-cert.pem", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + RootAnnotation + "']"}},
			}}},
		}},
	}})
	return nil
}

func optOut(pod *corev1.Pod) string {
	for _, k := range []string{annInject, annTrellisInject} {
		for _, m := range []map[string]string{pod.Annotations, pod.Labels} {
			if v, ok := m[k]; ok && strings.EqualFold(v, "false") {
				return k + " is \"false\""
			}
		}
	}
	return ""
}

func hasContainer(cs []corev1.Container, name string) bool {
	return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == name })
}

// portList checks a comma-separated port list and returns it normalised.
func portList(v, field string) (string, error) {
	var out []string
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if n, err := strconv.ParseUint(f, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("annotation %s: %q is not a port number (1-65535)", field, f)
		}
		out = append(out, f)
	}
	return strings.Join(out, ","), nil
}

func ptr[T any](v T) *T { return &v }
