package install

import (
	"bytes"
	"fmt"
	"path"
	"strconv"
	"strings"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Names of what an install creates.
const (
	ControlPlane = "trellis-control"
	// NodeAgent is the node agent's DaemonSet (and its service account):
	// cmd/trellis-node looks for it by this name when it stops; it must
	// match kube.NodeAgent.
	NodeAgent = "trellis-node"
	// WebhookConfig must match kube.WebhookConfigName.
	WebhookConfig = "trellis-sidecar-injector"
	// StatusLease elects the replica writing routes' status; it must
	// match kube.StatusLeaseName.
	StatusLease = "trellis-route-status"
	// PartOf labels every object of an install.
	PartOf = "app.kubernetes.io/part-of"
)

// Ports of the control plane.
const (
	grpcPort    = 15012
	metricsPort = 15014
	webhookPort = 15017
	// DashboardPort serves the dashboard, on the control plane's Service
	// too.
	DashboardPort = 20001
	// nodeMetricsPort is the node agent's /metrics and readiness, on the
	// node's address.
	nodeMetricsPort = 15090
)

// Render returns every object of an install, in apply order (CRDs and the
// namespace first, the webhook registration last), as YAML documents.
func Render(v Values) ([]byte, error) {
	if err := v.Check(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for _, o := range Objects(v) {
		data, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(data)
	}
	return buf.Bytes(), nil
}

// Objects are the install's objects, in apply order.
func Objects(v Values) []any {
	labels := map[string]string{PartOf: "trellis", "app": ControlPlane}
	om := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: v.Namespace, Labels: map[string]string{PartOf: "trellis"}}
	}
	cluster := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Labels: map[string]string{PartOf: "trellis"}}
	}
	tm := func(apiVersion, kind string) metav1.TypeMeta {
		return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
	}
	// account is a service account with its cluster-wide and namespaced
	// rights.
	account := func(name string, clusterRules, namespaceRules []rbacv1.PolicyRule) []any {
		subjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: v.Namespace}}
		objs := []any{
			&corev1.ServiceAccount{TypeMeta: tm("v1", "ServiceAccount"), ObjectMeta: om(name)},
			&rbacv1.ClusterRole{TypeMeta: tm("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: cluster(name), Rules: clusterRules},
			&rbacv1.ClusterRoleBinding{TypeMeta: tm("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), ObjectMeta: cluster(name),
				RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}, Subjects: subjects},
		}
		if len(namespaceRules) == 0 {
			return objs
		}
		return append(objs,
			&rbacv1.Role{TypeMeta: tm("rbac.authorization.k8s.io/v1", "Role"), ObjectMeta: om(name), Rules: namespaceRules},
			&rbacv1.RoleBinding{TypeMeta: tm("rbac.authorization.k8s.io/v1", "RoleBinding"), ObjectMeta: om(name),
				RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name}, Subjects: subjects})
	}
	objs := []any{peerAuthenticationCRD(), authorizationPolicyCRD(), requestAuthenticationCRD(), virtualServiceCRD(), destinationRuleCRD(),
		&corev1.Namespace{TypeMeta: tm("v1", "Namespace"), ObjectMeta: cluster(v.Namespace)}}
	objs = append(objs, account(ControlPlane, ClusterRules(), NamespaceRules())...)
	objs = append(objs,
		&corev1.Service{TypeMeta: tm("v1", "Service"), ObjectMeta: om(ControlPlane), Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": ControlPlane},
			Ports: []corev1.ServicePort{
				{Name: "grpc-trellis", Port: grpcPort, TargetPort: intstr.FromInt32(grpcPort)},
				{Name: "http-monitoring", Port: metricsPort, TargetPort: intstr.FromInt32(metricsPort)},
				{Name: "https-webhook", Port: 443, TargetPort: intstr.FromInt32(webhookPort)},
				{Name: "http-dashboard", Port: DashboardPort, TargetPort: intstr.FromInt32(DashboardPort)},
			}}},
		controlPlaneDeployment(v, labels, om(ControlPlane)))
	if v.NodeAgent.Enabled {
		objs = append(objs, account(NodeAgent, NodeAgentClusterRules(), NodeAgentNamespaceRules())...)
		objs = append(objs, nodeAgentDaemonSet(v, om(NodeAgent)))
	}
	if v.Prometheus.Enabled {
		objs = append(objs, prometheusObjects(v, om, account)...)
	}
	return append(objs, webhookConfiguration(v, cluster(WebhookConfig)))
}

// NodeAgentClusterRules are what the node agent may do: read what
// NetworkPolicies select. A test pins the list.
func NodeAgentClusterRules() []rbacv1.PolicyRule {
	read := []string{"get", "list", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "pods"}, Verbs: read},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: read},
	}
}

// NodeAgentNamespaceRules: the agent reads its own DaemonSet when it
// stops, to tell an uninstall (remove the rules) from a restart (keep
// them).
func NodeAgentNamespaceRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{NodeAgent}, Verbs: []string{"get"}},
	}
}

// nodeAgentDaemonSet runs the node agent on every node, on the host
// network (the rules it writes are the node's), as root with NET_ADMIN
// only: nftables needs it, nothing else does.
func nodeAgentDaemonSet(v Values, meta metav1.ObjectMeta) *appsv1.DaemonSet {
	ptr := func(b bool) *bool { return &b }
	root := int64(0)
	labels := map[string]string{PartOf: "trellis", "app": NodeAgent}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	ready := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(nodeMetricsPort)}},
		PeriodSeconds: 2, TimeoutSeconds: 2, FailureThreshold: 3}
	args := []string{"--kubernetes", "--metrics-addr", fmt.Sprintf("$(HOST_IP):%d", nodeMetricsPort)}
	var volumes []corev1.Volume
	var mounts []corev1.VolumeMount
	if dir := v.NodeAgent.CNIResults; dir != "" {
		// The directory above it is mounted, so a results directory made
		// again on the node is seen, not the deleted one.
		args = append(args, "--cni-results", dir)
		volumes = append(volumes, corev1.Volume{Name: "cni-results", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path.Dir(dir)}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "cni-results", MountPath: path.Dir(dir), ReadOnly: true})
	}
	return &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"}, ObjectMeta: meta,
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": NodeAgent}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: scrapeAnnotations(nodeMetricsPort, "/metrics")},
				Spec: corev1.PodSpec{
					ServiceAccountName: NodeAgent,
					HostNetwork:        true,
					DNSPolicy:          corev1.DNSClusterFirstWithHostNet,
					PriorityClassName:  "system-node-critical",
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Volumes:            volumes,
					Containers: []corev1.Container{{
						Name: NodeAgent, Image: v.image("trellis-node"), ImagePullPolicy: corev1.PullPolicy(v.Image.PullPolicy),
						Args:           args,
						VolumeMounts:   mounts,
						Env:            []corev1.EnvVar{field("NODE_NAME", "spec.nodeName"), field("HOST_IP", "status.hostIP"), field("POD_NAMESPACE", "metadata.namespace")},
						Ports:          []corev1.ContainerPort{{Name: "http-monitoring", ContainerPort: nodeMetricsPort}},
						ReadinessProbe: ready,
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
						},
						SecurityContext: &corev1.SecurityContext{RunAsUser: &root, RunAsNonRoot: ptr(false), AllowPrivilegeEscalation: ptr(false),
							ReadOnlyRootFilesystem: ptr(true),
							Capabilities:           &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}}},
					}},
				},
			},
		}}
}

// ClusterRules are everything the control plane may do cluster-wide:
// read what it discovers, write the status of the routes and
// VirtualServices it is responsible for, scrape the dashboard's metrics
// through the API server's pod proxy, review tokens, and keep its own
// webhook registration's caBundle. A test pins the list.
func ClusterRules() []rbacv1.PolicyRule {
	read := []string{"get", "list", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"pods/proxy"}, Verbs: []string{"get"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"security.trellis.io", "security.istio.io"}, Resources: []string{"peerauthentications"}, Verbs: read},
		{APIGroups: []string{"security.trellis.io", "security.istio.io"}, Resources: []string{"authorizationpolicies"}, Verbs: read},
		{APIGroups: []string{"security.trellis.io", "security.istio.io"}, Resources: []string{"requestauthentications"}, Verbs: read},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes", "grpcroutes"}, Verbs: read},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes/status", "grpcroutes/status"}, Verbs: []string{"update"}},
		{APIGroups: []string{"networking.trellis.io", "networking.istio.io"}, Resources: []string{"virtualservices", "destinationrules"}, Verbs: read},
		{APIGroups: []string{"networking.trellis.io", "networking.istio.io"}, Resources: []string{"virtualservices/status"}, Verbs: []string{"update"}},
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"},
			ResourceNames: []string{WebhookConfig}, Verbs: []string{"get", "update"}},
	}
}

// NamespaceRules are what the control plane may do in its own namespace:
// keep its CA in a Secret and read an operator's.
func NamespaceRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"trellis-ca", "cacerts"}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{StatusLease}, Verbs: []string{"get", "update"}},
	}
}

func controlPlaneArgs(v Values) []string {
	args := []string{"--kubernetes", "--control-state-dir", "/var/run/trellis-control",
		"--trust-domain", v.TrustDomain, "--svid-ttl", v.ControlPlane.CertificateTTL,
		"--proxy-image", v.image("trellis-proxy"), "--proxy-pull-policy", v.Image.PullPolicy,
		"--metrics-addr", fmt.Sprintf(":%d", metricsPort), "--dashboard-addr", fmt.Sprintf(":%d", DashboardPort),
		"--proxy-traces", v.Tracing.Endpoint, "--proxy-trace-sampling", strconv.FormatFloat(v.Tracing.Sampling, 'f', -1, 64)}
	if v.Prometheus.Enabled {
		args = append(args, "--prometheus", v.PrometheusURL())
	}
	return args
}

func controlPlaneDeployment(v Values, labels map[string]string, meta metav1.ObjectMeta) *appsv1.Deployment {
	ptr := func(b bool) *bool { return &b }
	uid := int64(65532)
	ready := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(webhookPort), Scheme: corev1.URISchemeHTTPS}},
		PeriodSeconds: 2, TimeoutSeconds: 2, FailureThreshold: 3}
	live := ready.DeepCopy()
	live.PeriodSeconds, live.FailureThreshold = 10, 6
	return &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}, ObjectMeta: meta,
		Spec: appsv1.DeploymentSpec{
			Replicas: &v.ControlPlane.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": ControlPlane}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: scrapeAnnotations(metricsPort, "/metrics")},
				Spec: corev1.PodSpec{
					ServiceAccountName: ControlPlane,
					SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: &uid, RunAsGroup: &uid},
					Containers: []corev1.Container{{
						Name: ControlPlane, Image: v.image("trellis-control"), ImagePullPolicy: corev1.PullPolicy(v.Image.PullPolicy),
						Args: controlPlaneArgs(v),
						Env:  []corev1.EnvVar{{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}},
						Ports: []corev1.ContainerPort{
							{Name: "grpc-trellis", ContainerPort: grpcPort}, {Name: "http-monitoring", ContainerPort: metricsPort},
							{Name: "https-webhook", ContainerPort: webhookPort}, {Name: "http-dashboard", ContainerPort: DashboardPort},
						},
						ReadinessProbe: ready, LivenessProbe: live,
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
						},
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "state", MountPath: "/var/run/trellis-control"}},
					}},
					Volumes: []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}},
				},
			},
		}}
}

// webhookConfiguration registers injection for pods in namespaces labelled
// trellis.io/inject=enabled, or istio-injection=enabled (Istio's label)
// without a trellis.io/inject label; pods labelled
// sidecar.istio.io/inject=false or trellis.io/inject=false are never
// sent. Its caBundle is left empty: the control plane fills it with the
// mesh's roots (and keeps it so). Why each setting is what it is:
// docs/kubernetes.md.
func webhookConfiguration(v Values, meta metav1.ObjectMeta) *admissionregv1.MutatingWebhookConfiguration {
	path := "/inject"
	port := int32(443)
	fail := admissionregv1.Fail
	none := admissionregv1.SideEffectClassNone
	timeout := int32(10)
	reinvoke := admissionregv1.IfNeededReinvocationPolicy
	objects := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "sidecar.istio.io/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"}},
		{Key: "trellis.io/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"}},
	}}
	hook := func(name string, ns *metav1.LabelSelector) admissionregv1.MutatingWebhook {
		return admissionregv1.MutatingWebhook{
			Name: name,
			ClientConfig: admissionregv1.WebhookClientConfig{Service: &admissionregv1.ServiceReference{
				Namespace: v.Namespace, Name: ControlPlane, Path: &path, Port: &port}},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy: &fail, SideEffects: &none, TimeoutSeconds: &timeout, ReinvocationPolicy: &reinvoke,
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector:       ns, ObjectSelector: objects,
		}
	}
	return &admissionregv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: meta,
		Webhooks: []admissionregv1.MutatingWebhook{
			hook("namespace.sidecar.trellis.io", &metav1.LabelSelector{MatchLabels: map[string]string{"trellis.io/inject": "enabled"}}),
			hook("istio-namespace.sidecar.trellis.io", &metav1.LabelSelector{
				MatchLabels:      map[string]string{"istio-injection": "enabled"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "trellis.io/inject", Operator: metav1.LabelSelectorOpDoesNotExist}},
			}),
		},
	}
}

// peerAuthenticationCRD is security.trellis.io/v1 PeerAuthentication: the
// documented subset of Istio's (selector.matchLabels, mtls.mode,
// portLevelMtls), with a structural schema so the API server refuses
// unknown fields and bad modes.
func peerAuthenticationCRD() map[string]any {
	mode := object(map[string]any{"mode": map[string]any{"type": "string", "enum": []string{"UNSET", "PERMISSIVE", "STRICT"}}})
	return crd("security.trellis.io", "PeerAuthentication", "peerauthentications", "pa", schemaVersion(map[string]any{
		"selector":      workloadSelector(),
		"mtls":          mode,
		"portLevelMtls": map[string]any{"type": "object", "additionalProperties": mode},
	}))
}

// authorizationPolicyCRD is security.trellis.io/v1 AuthorizationPolicy:
// the documented subset of Istio's (docs/authorization.md), with a
// structural schema so the API server refuses unknown fields and bad
// actions (CUSTOM and its provider included: there is no external
// authorizer). What the schema cannot say (a selector and targetRefs
// together, an unsupported when key) the control plane refuses, logging
// it, as for a manifest.
func authorizationPolicyCRD() map[string]any {
	stringLists := func(names ...string) map[string]any {
		props := map[string]any{}
		for _, n := range names {
			props[n] = map[string]any{"type": "array", "items": map[string]any{"type": "string"}}
		}
		return object(props)
	}
	list := func(items map[string]any) map[string]any { return map[string]any{"type": "array", "items": items} }
	str := map[string]any{"type": "string"}
	targetRef := object(map[string]any{"group": str, "kind": str, "name": str, "namespace": str})
	targetRef["required"] = []string{"kind", "name"}
	condition := object(map[string]any{"key": str, "values": list(str), "notValues": list(str)})
	condition["required"] = []string{"key"}
	return crd("security.trellis.io", "AuthorizationPolicy", "authorizationpolicies", "ap", schemaVersion(map[string]any{
		"selector":   workloadSelector(),
		"targetRefs": list(targetRef),
		"action":     map[string]any{"type": "string", "enum": []string{"ALLOW", "DENY", "AUDIT"}},
		"rules": list(object(map[string]any{
			"from": list(object(map[string]any{"source": stringLists("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
				"namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")})),
			"to":   list(object(map[string]any{"operation": stringLists("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")})),
			"when": list(condition),
		})),
	}))
}

// requestAuthenticationCRD is security.trellis.io/v1
// RequestAuthentication: Istio's jwtRules (docs/authorization.md), with a
// structural schema. What it cannot say (a rule with both jwks and
// jwksUri, an http jwksUri off loopback, an invalid key set) the control
// plane refuses, logging it.
func requestAuthenticationCRD() map[string]any {
	str := map[string]any{"type": "string"}
	list := func(items map[string]any) map[string]any { return map[string]any{"type": "array", "items": items} }
	targetRef := object(map[string]any{"group": str, "kind": str, "name": str, "namespace": str})
	targetRef["required"] = []string{"kind", "name"}
	rule := object(map[string]any{
		"issuer": str, "audiences": list(str), "jwksUri": str, "jwks": str,
		"fromHeaders": list(object(map[string]any{"name": str, "prefix": str})),
		"fromParams":  list(str), "fromCookies": list(str),
		"forwardOriginalToken":  map[string]any{"type": "boolean"},
		"outputPayloadToHeader": str,
		"outputClaimToHeaders":  list(object(map[string]any{"header": str, "claim": str})),
	})
	rule["required"] = []string{"issuer"}
	return crd("security.trellis.io", "RequestAuthentication", "requestauthentications", "ra", schemaVersion(map[string]any{
		"selector": workloadSelector(), "targetRefs": list(targetRef), "jwtRules": list(rule),
	}))
}

// virtualServiceCRD is networking.trellis.io/v1 VirtualService: Istio's
// kind in Trellis's group, which the control plane reads as it reads
// networking.istio.io's.
func virtualServiceCRD() map[string]any {
	return crd("networking.trellis.io", "VirtualService", "virtualservices", "vs",
		openVersion(map[string]any{"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"}))
}

// destinationRuleCRD is networking.trellis.io/v1 DestinationRule:
// Istio's kind in Trellis's group, which the control plane reads as it
// reads networking.istio.io's.
func destinationRuleCRD() map[string]any {
	return crd("networking.trellis.io", "DestinationRule", "destinationrules", "dr",
		openVersion(map[string]any{"name": "Host", "type": "string", "jsonPath": ".spec.host"}))
}

// crd is the namespaced custom resource kind of group (plural, and short
// name short), served and stored as v1; version is the rest of v1: its
// schema, and any subresources and printer columns.
func crd(group, kind, plural, short string, version map[string]any) map[string]any {
	version["name"], version["served"], version["storage"] = "v1", true, true
	return map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": plural + "." + group, "labels": map[string]any{PartOf: "trellis"}},
		"spec": map[string]any{
			"group": group, "scope": "Namespaced",
			"names": map[string]any{"kind": kind, "listKind": kind + "List", "plural": plural,
				"singular": strings.ToLower(kind), "shortNames": []string{short}},
			"versions": []any{version},
		},
	}
}

// schemaVersion is a version whose spec has the given properties, a
// structural schema the API server enforces.
func schemaVersion(spec map[string]any) map[string]any {
	return map[string]any{"schema": map[string]any{"openAPIV3Schema": object(map[string]any{"spec": object(spec)})}}
}

// openVersion is a version whose spec and status the API server keeps
// whole, as Istio's own CRDs do: the control plane decodes the spec
// strictly and reports what it refuses in the status and its log. Status
// is a subresource, written through /status, so only a spec change bumps
// metadata.generation. Its printer columns are column and Age.
func openVersion(column map[string]any) map[string]any {
	open := map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
	return map[string]any{
		"schema":       map[string]any{"openAPIV3Schema": object(map[string]any{"spec": open, "status": open})},
		"subresources": map[string]any{"status": map[string]any{}},
		"additionalPrinterColumns": []any{column,
			map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}},
	}
}

// workloadSelector is the schema of Istio's selector.matchLabels.
func workloadSelector() map[string]any {
	return object(map[string]any{"matchLabels": map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}}})
}

// object is the schema of an object with these properties.
func object(props map[string]any) map[string]any {
	return map[string]any{"type": "object", "properties": props}
}
