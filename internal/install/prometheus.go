package install

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Prometheus is the optional Prometheus server's Deployment, Service,
// ConfigMap and service account.
const Prometheus = "trellis-prometheus"

// prometheusPort is where it serves its API and UI.
const prometheusPort = 9090

// PrometheusURL is the in-cluster address of an install's Prometheus
// server, which the dashboard reads when prometheus.enabled is set.
func (v *Values) PrometheusURL() string {
	return fmt.Sprintf("http://%s.%s.svc:%d", Prometheus, v.Namespace, prometheusPort)
}

// scrapeAnnotations are Istio's (and the common Helm charts') way of
// saying where a pod's metrics are, which the Prometheus server's one
// scrape job follows; the injector sets them on every meshed pod.
func scrapeAnnotations(port int, path string) map[string]string {
	return map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": fmt.Sprint(port), "prometheus.io/path": path}
}

// PrometheusClusterRules: discovering pods to scrape, in every namespace,
// and scraping them through the API server.
func PrometheusClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/proxy"}, Verbs: []string{"get"}},
	}
}

// prometheusConfig scrapes every running pod annotated
// prometheus.io/scrape=true on the port and path of its annotations (a
// path of plain segments only: anyone who can make a pod writes those
// annotations, and a "..", an escape or a query there would aim the
// server's pods/proxy right at another pod),
// labelling each series with the pod's namespace and name. It scrapes
// through the API server's pod proxy, as the dashboard does (see
// controlplane's podProxyTargets): a NetworkPolicy that isolates meshed
// pods then needs no rule for Prometheus's pod. Istio's standard
// dashboards query what it gathers.
func prometheusConfig(v Values) string {
	return fmt.Sprintf(`global:
  scrape_interval: %[1]s
  evaluation_interval: %[1]s
scrape_configs:
- job_name: kubernetes-pods
  scheme: https
  tls_config:
    ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
  authorization:
    credentials_file: /var/run/secrets/kubernetes.io/serviceaccount/token
  kubernetes_sd_configs:
  - role: pod
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    action: keep
    regex: "true"
  - source_labels: [__meta_kubernetes_pod_phase]
    action: keep
    regex: Running
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path, __meta_kubernetes_pod_annotation_prometheus_io_port]
    action: keep
    regex: '(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+;\d+'
  - source_labels: [__meta_kubernetes_namespace, __meta_kubernetes_pod_name, __meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_annotation_prometheus_io_path]
    action: replace
    regex: '([^;]+);([^;]+);(\d+);((?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+)'
    replacement: /api/v1/namespaces/$1/pods/$2:$3/proxy$4
    target_label: __metrics_path__
  - action: replace
    replacement: kubernetes.default.svc:443
    target_label: __address__
  - source_labels: [__meta_kubernetes_namespace, __meta_kubernetes_pod_name]
    action: replace
    separator: /
    target_label: instance
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod`, v.Prometheus.ScrapeInterval)
}

// prometheusObjects are the Prometheus server: one replica keeping six
// hours in memory-backed storage, as non-root with nothing else allowed.
func prometheusObjects(v Values, om func(string) metav1.ObjectMeta, account func(string, []rbacv1.PolicyRule, []rbacv1.PolicyRule) []any) []any {
	ptr := func(b bool) *bool { return &b }
	nobody := int64(65534)
	labels := map[string]string{PartOf: "trellis", "app": Prometheus}
	ready := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/-/ready", Port: intstr.FromInt32(prometheusPort)}},
		PeriodSeconds: 2, TimeoutSeconds: 2, FailureThreshold: 3}
	replicas := int32(1)
	objs := account(Prometheus, PrometheusClusterRules(), nil)
	objs = append(objs,
		&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: om(Prometheus),
			Data: map[string]string{"prometheus.yml": prometheusConfig(v)}},
		&corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}, ObjectMeta: om(Prometheus), Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": Prometheus},
			Ports:    []corev1.ServicePort{{Name: "http-prometheus", Port: prometheusPort, TargetPort: intstr.FromInt32(prometheusPort)}}}},
		&appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}, ObjectMeta: om(Prometheus),
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": Prometheus}},
				Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						ServiceAccountName: Prometheus,
						SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: &nobody, RunAsGroup: &nobody},
						Containers: []corev1.Container{{
							Name: "prometheus", Image: v.Prometheus.Image, ImagePullPolicy: corev1.PullPolicy(v.Image.PullPolicy),
							Args: []string{"--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
								"--storage.tsdb.retention.time=6h", fmt.Sprintf("--web.listen-address=:%d", prometheusPort)},
							Ports:          []corev1.ContainerPort{{Name: "http-prometheus", ContainerPort: prometheusPort}},
							ReadinessProbe: ready,
							Resources: corev1.ResourceRequirements{
								Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
								Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
							},
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
							VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/prometheus"}, {Name: "data", MountPath: "/prometheus"}},
						}},
						Volumes: []corev1.Volume{
							{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
								LocalObjectReference: corev1.LocalObjectReference{Name: Prometheus}}}},
							{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						},
					},
				},
			}})
	return objs
}
