package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// decoder turns one document of a known kind into a catalog object.
type decoder struct {
	apiVersion  string   // the one accepted, unless apiVersions is set
	apiVersions []string // several accepted, the first preferred
	decode      func(doc []byte) (catalog.Ref, any, error)
}

var decoders = map[string]decoder{
	"Namespace":          {"v1", nil, decodeNamespace},
	"ServiceAccount":     {"v1", nil, decodeServiceAccount},
	"Pod":                {"v1", nil, decodePod},
	"Service":            {"v1", nil, decodeService},
	"Deployment":         {"apps/v1", nil, decodeDeployment},
	"NetworkPolicy":      {"networking.k8s.io/v1", nil, decodeNetworkPolicy},
	"PeerAuthentication": {"", peerAuthVersions, decodePeerAuthentication},
	// The same groups as PeerAuthentication's.
	"AuthorizationPolicy":   {"", peerAuthVersions, decodeAuthorizationPolicy},
	"RequestAuthentication": {"", peerAuthVersions, decodeRequestAuthentication},
	"HTTPRoute":             {"", httpRouteVersions, decodeHTTPRoute},
	"GRPCRoute":             {"", grpcRouteVersions, decodeGRPCRoute},
	"DestinationRule":       {"", destinationRuleVersions, decodeDestinationRule},
	"VirtualService":        {"", virtualServiceVersions, decodeVirtualService},
}

func (d decoder) accepts(v string) bool {
	if d.apiVersions == nil {
		return v == d.apiVersion
	}
	for _, a := range d.apiVersions {
		if v == a {
			return true
		}
	}
	return false
}

func (d decoder) preferred() string {
	if d.apiVersions == nil {
		return d.apiVersion
	}
	return d.apiVersions[0]
}

// Parse decodes every document of every source. It checks each object on its
// own (fields, names, ports) and rejects two documents that define the same
// object; checks that need the whole mesh are Validate's. All problems are
// returned together, one line each.
func Parse(srcs []Source) (*Set, error) {
	set := &Set{}
	var errs []error
	for _, src := range srcs {
		docs, err := splitDocuments(src.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src.Name, err))
			continue
		}
		for i, doc := range docs {
			ref, obj, err := decodeDocument(doc)
			if err != nil && ref.Name != "" {
				errs = append(errs, fmt.Errorf("%s: %s: %w", src.Name, ref, err))
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: document %d: %w", src.Name, i+1, err))
				continue
			}
			if obj == nil {
				continue // an empty document
			}
			if prev := set.Origin(ref); prev != "" {
				errs = append(errs, fmt.Errorf("%s: %s: duplicate name: already defined in %s", src.Name, ref, prev))
				continue
			}
			if err := checkObject(obj); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", src.Name, ref, err))
				continue
			}
			set.Put(ref, obj, src.Name)
		}
	}
	return set, errors.Join(errs...)
}

func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML documents: %w", err)
		}
		docs = append(docs, doc)
	}
}

func decodeDocument(doc []byte) (catalog.Ref, any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return catalog.Ref{}, nil, fmt.Errorf("not a Kubernetes object: %v", err)
	}
	if tm.Kind == "" && tm.APIVersion == "" {
		if len(bytes.TrimSpace(stripComments(doc))) == 0 || string(bytes.TrimSpace(doc)) == "null" {
			return catalog.Ref{}, nil, nil
		}
		return catalog.Ref{}, nil, errors.New("missing kind and apiVersion")
	}
	d, ok := decoders[tm.Kind]
	if !ok {
		return catalog.Ref{}, nil, fmt.Errorf("unknown kind %q (apiVersion %s); supported kinds: %s", tm.Kind, tm.APIVersion, supportedKinds())
	}
	if !d.accepts(tm.APIVersion) {
		return guessRef(doc, tm.Kind), nil, fmt.Errorf("apiVersion %q is not supported; use %q", tm.APIVersion, d.preferred())
	}
	ref, obj, err := d.decode(doc)
	if err != nil && ref.Name == "" {
		ref = guessRef(doc, tm.Kind)
	}
	return ref, obj, err
}

// guessRef reads just the name and namespace of a document that failed to
// decode strictly, so its error can still name the object.
func guessRef(doc []byte, kind string) catalog.Ref {
	var m struct {
		Metadata struct{ Name, Namespace string }
	}
	_ = yaml.Unmarshal(doc, &m)
	ref := catalog.Ref{Kind: catalog.Kind(kind), Name: m.Metadata.Name, Namespace: m.Metadata.Namespace}
	if ref.Namespace == "" && kind != string(catalog.KindNamespace) {
		ref.Namespace = "default"
	}
	return ref
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

// strict decodes doc into v, rejecting unknown fields as kubectl's strict
// validation does, so a typo is an error rather than a silently dropped field.
func strict(doc []byte, v any, kind string) error {
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "error unmarshaling JSON: while decoding JSON: ")
		msg = strings.TrimPrefix(msg, "json: ")
		return fmt.Errorf("%s (check the field names against the %s API)", msg, kind)
	}
	return nil
}

func meta(om metav1.ObjectMeta, namespaced bool) catalog.Meta {
	m := catalog.Meta{Name: om.Name, Labels: om.Labels, Annotations: om.Annotations}
	if namespaced {
		m.Namespace = om.Namespace
		if m.Namespace == "" {
			m.Namespace = "default"
		}
	}
	return m
}

func decodeNamespace(doc []byte) (catalog.Ref, any, error) {
	var o corev1.Namespace
	if err := strict(doc, &o, "Namespace"); err != nil {
		return catalog.Ref{}, nil, err
	}
	ns := &catalog.Namespace{Meta: meta(o.ObjectMeta, false)}
	return catalog.Ref{Kind: catalog.KindNamespace, Name: ns.Name}, ns, nil
}

func decodeServiceAccount(doc []byte) (catalog.Ref, any, error) {
	var o corev1.ServiceAccount
	if err := strict(doc, &o, "ServiceAccount"); err != nil {
		return catalog.Ref{}, nil, err
	}
	sa := &catalog.ServiceAccount{Meta: meta(o.ObjectMeta, true)}
	return catalog.Ref{Kind: catalog.KindServiceAccount, Namespace: sa.Namespace, Name: sa.Name}, sa, nil
}

func decodePod(doc []byte) (catalog.Ref, any, error) {
	var o corev1.Pod
	if err := strict(doc, &o, "Pod"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindPod, Namespace: m.Namespace, Name: m.Name}
	spec, err := podSpec(o.Spec)
	if err != nil {
		return ref, nil, err
	}
	return ref, &catalog.Pod{Meta: m, Spec: spec}, nil
}

func decodeDeployment(doc []byte) (catalog.Ref, any, error) {
	var o appsv1.Deployment
	if err := strict(doc, &o, "Deployment"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindDeployment, Namespace: m.Namespace, Name: m.Name}
	spec, err := podSpec(o.Spec.Template.Spec)
	if err != nil {
		return ref, nil, fmt.Errorf("template: %w", err)
	}
	d := &catalog.Deployment{
		Meta:     m,
		Replicas: 1,
		Template: catalog.PodTemplate{
			Labels:      o.Spec.Template.Labels,
			Annotations: o.Spec.Template.Annotations,
			Spec:        spec,
		},
	}
	if o.Spec.Replicas != nil {
		d.Replicas = int(*o.Spec.Replicas)
	}
	if o.Spec.Selector != nil {
		if len(o.Spec.Selector.MatchExpressions) > 0 {
			return ref, nil, errors.New("spec.selector.matchExpressions is not supported in one-host mode; use matchLabels")
		}
		d.Selector = o.Spec.Selector.MatchLabels
	}
	return ref, d, nil
}

func decodeService(doc []byte) (catalog.Ref, any, error) {
	var o corev1.Service
	if err := strict(doc, &o, "Service"); err != nil {
		return catalog.Ref{}, nil, err
	}
	m := meta(o.ObjectMeta, true)
	ref := catalog.Ref{Kind: catalog.KindService, Namespace: m.Namespace, Name: m.Name}
	if t := o.Spec.Type; t != "" && t != corev1.ServiceTypeClusterIP {
		return ref, nil, fmt.Errorf("spec.type %q is not supported in one-host mode; use ClusterIP", t)
	}
	if o.Spec.ClusterIP == corev1.ClusterIPNone {
		return ref, nil, errors.New("headless services (clusterIP: None) are not supported in one-host mode")
	}
	svc := &catalog.Service{Meta: m, Selector: o.Spec.Selector}
	for _, p := range o.Spec.Ports {
		sp := catalog.ServicePort{
			Name:     p.Name,
			Protocol: protocol(p.Protocol),
			Port:     p.Port,
		}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		switch {
		case p.TargetPort.Type == intstr.String:
			sp.TargetPortName = p.TargetPort.StrVal
		case p.TargetPort.IntVal == 0:
			sp.TargetPort = p.Port
		default:
			sp.TargetPort = p.TargetPort.IntVal
		}
		svc.Ports = append(svc.Ports, sp)
	}
	return ref, svc, nil
}

func protocol(p corev1.Protocol) catalog.Protocol {
	if p == "" {
		return catalog.TCP
	}
	return catalog.Protocol(p)
}

func podSpec(s corev1.PodSpec) (catalog.PodSpec, error) {
	out := catalog.PodSpec{
		ServiceAccount:   s.ServiceAccountName,
		RestartPolicy:    catalog.RestartPolicy(s.RestartPolicy),
		TerminationGrace: 10 * time.Second,
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	if out.RestartPolicy == "" {
		out.RestartPolicy = catalog.RestartAlways
	}
	if g := s.TerminationGracePeriodSeconds; g != nil {
		out.TerminationGrace = time.Duration(*g) * time.Second
	}
	if len(s.InitContainers) > 0 {
		return out, errors.New("spec.initContainers are not supported in one-host mode")
	}
	if err := checkPodSecurity(s.SecurityContext); err != nil {
		return out, err
	}
	for _, c := range s.Containers {
		cc, err := container(c)
		if err == nil {
			cc.Security, err = security(s.SecurityContext, c.SecurityContext)
		}
		if err != nil {
			return out, fmt.Errorf("container %q: %w", c.Name, err)
		}
		out.Containers = append(out.Containers, cc)
	}
	return out, nil
}

// checkPodSecurity refuses the pod securityContext fields one-host mode
// cannot honour; fsGroup and fsGroupChangePolicy concern volumes, which
// one-host pods do not have.
func checkPodSecurity(p *corev1.PodSecurityContext) error {
	if p == nil {
		return nil
	}
	for field, set := range map[string]bool{
		"seLinuxOptions": p.SELinuxOptions != nil, "windowsOptions": p.WindowsOptions != nil,
		"sysctls": len(p.Sysctls) > 0, "seccompProfile": p.SeccompProfile != nil,
		"appArmorProfile": p.AppArmorProfile != nil, "supplementalGroupsPolicy": p.SupplementalGroupsPolicy != nil,
		"seLinuxChangePolicy": p.SELinuxChangePolicy != nil,
	} {
		if set {
			return fmt.Errorf("spec.securityContext.%s is not supported in one-host mode; remove it", field)
		}
	}
	return nil
}

// security merges the pod's and the container's securityContext (the
// container's fields win) and checks that one-host mode can honour it.
func security(pod *corev1.PodSecurityContext, c *corev1.SecurityContext) (catalog.Security, error) {
	var out catalog.Security
	nonRoot := false
	if pod != nil {
		out.RunAsUser, out.RunAsGroup = pod.RunAsUser, pod.RunAsGroup
		out.SupplementalGroups = pod.SupplementalGroups
		nonRoot = pod.RunAsNonRoot != nil && *pod.RunAsNonRoot
	}
	if c != nil {
		for field, set := range map[string]bool{
			"seLinuxOptions": c.SELinuxOptions != nil, "windowsOptions": c.WindowsOptions != nil,
			"seccompProfile": c.SeccompProfile != nil, "appArmorProfile": c.AppArmorProfile != nil,
			"procMount":  c.ProcMount != nil && *c.ProcMount != corev1.DefaultProcMount,
			"privileged": c.Privileged != nil && *c.Privileged,
		} {
			if set {
				return out, fmt.Errorf("securityContext.%s is not supported in one-host mode; remove it", field)
			}
		}
		if c.RunAsUser != nil {
			out.RunAsUser = c.RunAsUser
		}
		if c.RunAsGroup != nil {
			out.RunAsGroup = c.RunAsGroup
		}
		if c.RunAsNonRoot != nil {
			nonRoot = *c.RunAsNonRoot
		}
		out.ReadOnlyRootFilesystem = c.ReadOnlyRootFilesystem != nil && *c.ReadOnlyRootFilesystem
		out.AllowPrivilegeEscalation = c.AllowPrivilegeEscalation != nil && *c.AllowPrivilegeEscalation
		if c.Capabilities != nil {
			caps, err := capabilities(c.Capabilities)
			if err != nil {
				return out, err
			}
			out.Capabilities = caps
		}
	}
	ids := map[string]*int64{"runAsUser": out.RunAsUser, "runAsGroup": out.RunAsGroup}
	for i := range out.SupplementalGroups {
		ids[fmt.Sprintf("supplementalGroups[%d]", i)] = &out.SupplementalGroups[i]
	}
	for field, id := range ids {
		if id != nil && (*id < 0 || *id > catalog.MaxPodID) {
			return out, fmt.Errorf("securityContext.%s %d: one-host pods have the ids 0-%d; choose one of them", field, *id, catalog.MaxPodID)
		}
	}
	if nonRoot && out.UID() == 0 {
		return out, errors.New("securityContext.runAsNonRoot is true but the container would run as root (uid 0): " +
			"set securityContext.runAsUser to a non-zero uid (one-host pods have no image to take a user from)")
	}
	return out, nil
}

// capabilities returns what a container keeps: the default is none, so
// that is capabilities.add ("ALL": every one) less capabilities.drop
// ("ALL" there drops only the default set, which is empty).
func capabilities(c *corev1.Capabilities) ([]string, error) {
	name := func(field string, v corev1.Capability) (string, error) {
		n := strings.TrimPrefix(strings.ToUpper(string(v)), "CAP_")
		if _, ok := catalog.CapabilityNumbers[n]; !ok && n != "ALL" {
			return "", fmt.Errorf("securityContext.capabilities.%s: %q is not a Linux capability (e.g. NET_BIND_SERVICE, CHOWN)", field, v)
		}
		return n, nil
	}
	drop := map[string]bool{}
	for _, v := range c.Drop {
		n, err := name("drop", v)
		if err != nil {
			return nil, err
		}
		drop[n] = true
	}
	keep := map[string]bool{}
	for _, v := range c.Add {
		n, err := name("add", v)
		if err != nil {
			return nil, err
		}
		if n != "ALL" {
			keep[n] = true
			continue
		}
		for all := range catalog.CapabilityNumbers {
			keep[all] = true
		}
	}
	var out []string
	for n := range keep {
		if !drop[n] {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

func container(c corev1.Container) (catalog.Container, error) {
	out := catalog.Container{Name: c.Name, Image: c.Image, WorkingDir: c.WorkingDir}
	out.Command = append(append([]string(nil), c.Command...), c.Args...)
	for _, p := range c.Ports {
		out.Ports = append(out.Ports, catalog.ContainerPort{Name: p.Name, Port: p.ContainerPort, Protocol: protocol(p.Protocol)})
	}
	for _, e := range c.Env {
		ev := catalog.EnvVar{Name: e.Name, Value: e.Value}
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				return out, fmt.Errorf("env %s: only valueFrom.fieldRef is supported in one-host mode", e.Name)
			}
			ev.FieldPath = e.ValueFrom.FieldRef.FieldPath
		}
		out.Env = append(out.Env, ev)
	}
	if c.ReadinessProbe != nil {
		p, err := probe(c.ReadinessProbe, out.Ports)
		if err != nil {
			return out, fmt.Errorf("readinessProbe: %w", err)
		}
		out.Readiness = p
	}
	return out, nil
}

func probe(p *corev1.Probe, ports []catalog.ContainerPort) (*catalog.Probe, error) {
	out := &catalog.Probe{
		InitialDelay:     time.Duration(p.InitialDelaySeconds) * time.Second,
		Period:           seconds(p.PeriodSeconds, 10),
		Timeout:          seconds(p.TimeoutSeconds, 1),
		SuccessThreshold: int(orDefault(p.SuccessThreshold, 1)),
		FailureThreshold: int(orDefault(p.FailureThreshold, 3)),
	}
	switch h := p.ProbeHandler; {
	case h.HTTPGet != nil:
		port, err := probePort(h.HTTPGet.Port, ports)
		if err != nil {
			return nil, fmt.Errorf("httpGet: %w", err)
		}
		if h.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			return nil, errors.New("httpGet: scheme HTTPS is not supported in one-host mode")
		}
		path := h.HTTPGet.Path
		if path == "" {
			path = "/"
		}
		out.HTTPGet = &catalog.HTTPGetAction{Path: path, Port: port}
	case h.TCPSocket != nil:
		port, err := probePort(h.TCPSocket.Port, ports)
		if err != nil {
			return nil, fmt.Errorf("tcpSocket: %w", err)
		}
		out.TCPSocket = &catalog.TCPSocketAction{Port: port}
	case h.Exec != nil:
		if len(h.Exec.Command) == 0 {
			return nil, errors.New("exec.command is empty")
		}
		out.Exec = h.Exec.Command
	default:
		return nil, errors.New("no handler: set httpGet, tcpSocket or exec")
	}
	return out, nil
}

func probePort(p intstr.IntOrString, ports []catalog.ContainerPort) (int32, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("port %d is out of range 1-65535", p.IntVal)
		}
		return p.IntVal, nil
	}
	for _, cp := range ports {
		if cp.Name == p.StrVal {
			return cp.Port, nil
		}
	}
	return 0, fmt.Errorf("port %q matches no port of this container", p.StrVal)
}

func seconds(v, def int32) time.Duration {
	return time.Duration(orDefault(v, def)) * time.Second
}

func orDefault(v, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}
