package kube

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/version"

	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/push"
)

// CheckResult is one line of `trellis check`.
type CheckResult struct {
	Group string // "kubernetes-api", "pre-install", "control-plane", "data-plane"
	Name  string
	// Status is "ok", "warn" (works, but look) or "fail".
	Status string
	// Detail says what was found; Hint what to do about a warn or fail.
	Detail, Hint string
}

// MinKubernetes is the oldest API server Trellis supports: native
// sidecars (restartPolicy Always on init containers) are on by default
// from 1.29.
const MinKubernetes = 29

// Checker runs `trellis check`'s checks against one cluster.
type Checker struct {
	Clients   *kubeclient.Clients
	Namespace string // Trellis's
	// Now is the clock certificate expiry is judged by. Default time.Now.
	Now func() time.Time
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Pre checks a cluster before install: API access, version, and the
// rights install needs.
func (c *Checker) Pre(ctx context.Context) []CheckResult {
	out := c.api()
	if out[len(out)-1].Status == "fail" {
		return out
	}
	for _, r := range []authzv1.ResourceAttributes{
		{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "create"},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings", Verb: "create"},
		{Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Verb: "create"},
		{Resource: "namespaces", Verb: "create"},
		{Group: "apps", Resource: "deployments", Verb: "create", Namespace: c.Namespace},
		{Group: "apps", Resource: "daemonsets", Verb: "create", Namespace: c.Namespace},
	} {
		name := fmt.Sprintf("can %s %s", r.Verb, r.Resource)
		review, err := c.Clients.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &r}}, metav1.CreateOptions{})
		switch {
		case err != nil:
			out = append(out, CheckResult{"pre-install", name, "fail", err.Error(), "check the kubeconfig's credentials"})
		case !review.Status.Allowed:
			out = append(out, CheckResult{"pre-install", name, "fail", "not allowed", "install as a cluster administrator"})
		default:
			out = append(out, CheckResult{"pre-install", name, "ok", "", ""})
		}
	}
	if ns, err := c.Clients.Client.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{}); err == nil && ns.Labels["app.kubernetes.io/part-of"] != "trellis" {
		out = append(out, CheckResult{"pre-install", "namespace " + c.Namespace, "warn", "exists and was not made by trellis install",
			"install into it anyway, or choose another with --set namespace=NAME"})
	}
	return append(out, c.otherPolicyEngines(ctx, "pre-install"))
}

// policyEngines are the DaemonSets of network plugins that enforce
// NetworkPolicy themselves, by name.
var policyEngines = map[string]string{"calico-node": "Calico", "cilium": "Cilium", "kube-router": "kube-router",
	"antrea-agent": "Antrea", "weave-net": "Weave Net", "canal": "Canal"}

// otherPolicyEngines warns when another NetworkPolicy engine runs: then
// every packet must pass both its rules and the node agent's.
func (c *Checker) otherPolicyEngines(ctx context.Context, group string) CheckResult {
	const name = "no other NetworkPolicy engine"
	dss, err := c.Clients.Client.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return CheckResult{group, name, "warn", "cannot list DaemonSets: " + err.Error(), "check the kubeconfig's rights"}
	}
	var found []string
	for _, ds := range dss.Items {
		if engine, ok := policyEngines[ds.Name]; ok {
			found = append(found, fmt.Sprintf("%s (%s/%s)", engine, ds.Namespace, ds.Name))
		}
	}
	if len(found) > 0 {
		return CheckResult{group, name, "warn", strings.Join(found, ", ") + " enforces NetworkPolicy too: a packet must pass both",
			"keep one engine: remove the other, or install Trellis without its node agent (--set nodeAgent.enabled=false)"}
	}
	return CheckResult{group, name, "ok", "none found", ""}
}

// nodeAgents checks that a node agent enforces NetworkPolicy on every node.
func (c *Checker) nodeAgents(ctx context.Context) CheckResult {
	const name = "node agents ready"
	ds, err := c.Clients.Client.AppsV1().DaemonSets(c.Namespace).Get(ctx, NodeAgent, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return CheckResult{"network-policy", name, "warn", "installed without the node agent: Trellis enforces no NetworkPolicy",
			"another engine must, or install with --set nodeAgent.enabled=true"}
	}
	if err != nil {
		return CheckResult{"network-policy", name, "fail", err.Error(), "check the kubeconfig's rights"}
	}
	st := ds.Status
	detail := fmt.Sprintf("%d of %d nodes", st.NumberReady, st.DesiredNumberScheduled)
	if st.NumberReady < st.DesiredNumberScheduled || st.DesiredNumberScheduled == 0 {
		return CheckResult{"network-policy", name, "fail", detail + ": NetworkPolicy is not enforced where an agent is not ready",
			"kubectl -n " + c.Namespace + " describe daemonset trellis-node; kubectl -n " + c.Namespace + " logs ds/trellis-node"}
	}
	return CheckResult{"network-policy", name, "ok", detail, ""}
}

// api checks access and version; the last result fails when there is no
// access.
func (c *Checker) api() []CheckResult {
	v, err := c.Clients.Client.Discovery().ServerVersion()
	if err != nil {
		return []CheckResult{{"kubernetes-api", "can reach the API server", "fail", err.Error(), "check the kubeconfig (--kubeconfig, $KUBECONFIG)"}}
	}
	out := []CheckResult{{"kubernetes-api", "can reach the API server", "ok", v.GitVersion, ""}}
	if minor := minorOf(v); minor < MinKubernetes {
		out = append(out, CheckResult{"kubernetes-api", "version", "fail", v.GitVersion,
			fmt.Sprintf("Trellis needs Kubernetes 1.%d or newer (native sidecars)", MinKubernetes)})
	} else {
		out = append(out, CheckResult{"kubernetes-api", "version", "ok", fmt.Sprintf("1.%d ≥ 1.%d", minor, MinKubernetes), ""})
	}
	return out
}

func minorOf(v *version.Info) int {
	n, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	return n
}

// Installed checks an installed mesh: the control plane, the webhook
// (its caBundle, and that it injects), the root's expiry, and every pod
// of a meshed namespace: injected, and its sidecar connected and synced.
func (c *Checker) Installed(ctx context.Context) []CheckResult {
	out := c.api()
	if out[len(out)-1].Status == "fail" {
		return out
	}
	cs := c.Clients.Client
	add := func(name, status, detail, hint string) {
		out = append(out, CheckResult{"control-plane", name, status, detail, hint})
	}
	dep, err := cs.AppsV1().Deployments(c.Namespace).Get(ctx, "trellis-control", metav1.GetOptions{})
	if err != nil {
		add("control plane deployed", "fail", err.Error(), "install it: trellis install")
		return out
	}
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	if dep.Status.ReadyReplicas < want {
		add("control plane ready", "fail", fmt.Sprintf("%d of %d replicas ready", dep.Status.ReadyReplicas, want),
			"kubectl -n "+c.Namespace+" describe deployment trellis-control; kubectl -n "+c.Namespace+" logs deploy/trellis-control")
	} else {
		add("control plane ready", "ok", fmt.Sprintf("%d of %d replicas", dep.Status.ReadyReplicas, want), "")
	}
	out = append(out, c.nodeAgents(ctx), c.otherPolicyEngines(ctx, "network-policy"))
	roots, err := WebhookCABundle(ctx, cs, WebhookConfigName)
	if err != nil {
		add("injection webhook has the mesh's roots", "fail", err.Error(), "the control plane sets it: see its logs")
	} else if certs, err := parseCerts(roots); err != nil {
		add("injection webhook has the mesh's roots", "fail", err.Error(), "the control plane sets it: see its logs")
	} else {
		add("injection webhook has the mesh's roots", "ok", fmt.Sprintf("%d root(s)", len(certs)), "")
		first := slices.MinFunc(certs, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) })
		left := first.NotAfter.Sub(c.now())
		switch {
		case left <= 0:
			add("root certificate valid", "fail", "expired "+first.NotAfter.Format(time.RFC3339), "rotate the root")
		case left < 30*24*time.Hour:
			add("root certificate valid", "warn", fmt.Sprintf("expires in %d days", int(left.Hours()/24)), "rotate the root soon")
		default:
			add("root certificate valid", "ok", "until "+first.NotAfter.Format(time.DateOnly), "")
		}
	}
	meshed, err := c.meshedNamespaces(ctx)
	if err != nil {
		add("meshed namespaces", "fail", err.Error(), "")
		return out
	}
	if len(meshed) == 0 {
		add("injection webhook injects", "warn", "no namespace is labelled for injection, so it was not tried",
			"kubectl label namespace NAME trellis.io/inject=enabled")
	} else {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "trellis-check-"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: "trellis.local/check:0"}}}}
		got, err := cs.CoreV1().Pods(meshed[0]).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err != nil:
			add("injection webhook injects", "fail", err.Error(), "the API server cannot call the webhook: check the control plane's Service and logs")
		case !slices.ContainsFunc(got.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == SidecarContainer }):
			add("injection webhook injects", "fail", "a dry-run pod in "+meshed[0]+" came back without the sidecar", "kubectl get mutatingwebhookconfiguration "+WebhookConfigName+" -o yaml")
		default:
			add("injection webhook injects", "ok", "a dry-run pod in "+meshed[0]+" got the sidecar", "")
		}
	}
	return append(out, c.dataPlane(ctx, meshed)...)
}

// meshedNamespaces are the namespaces labelled for injection.
func (c *Checker) meshedNamespaces(ctx context.Context) ([]string, error) {
	nss, err := c.Clients.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ns := range nss.Items {
		if Meshed(ns.Labels) {
			out = append(out, ns.Name)
		}
	}
	return out, nil
}

// Meshed reports whether a namespace's labels ask for injection (the
// webhook registration's selectors).
func Meshed(labels map[string]string) bool {
	v, ok := labels["trellis.io/inject"]
	return v == "enabled" || (!ok && labels["istio-injection"] == "enabled")
}

// dataPlane checks every running pod with a sidecar (connected, synced,
// certified) and every pod of a meshed namespace without one.
func (c *Checker) dataPlane(ctx context.Context, meshed []string) []CheckResult {
	var out []CheckResult
	add := func(name, status, detail, hint string) {
		out = append(out, CheckResult{"data-plane", name, status, detail, hint})
	}
	status, err := ProxyStatuses(ctx, c.Clients, c.Namespace)
	if err != nil {
		add("sidecars connected", "fail", err.Error(), "kubectl -n "+c.Namespace+" logs deploy/trellis-control")
		return out
	}
	var injected, stale int
	needRestart := map[string][]string{}
	pods, err := c.Clients.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "status.phase=Running"})
	if err != nil {
		add("pods", "fail", err.Error(), "")
		return out
	}
	for _, p := range pods.Items {
		ns := p.Namespace
		if p.DeletionTimestamp != nil {
			continue
		}
		if !RunningPod(&p).Sidecar {
			if slices.Contains(meshed, ns) && !optedOut(&p) {
				needRestart[ns] = append(needRestart[ns], p.Name)
			}
			continue
		}
		injected++
		key := ns + "/" + p.Name
		st, ok := status[key]
		switch {
		case !ok || !st.Connected:
			stale++
			add("sidecar of "+key, "fail", "not connected to the control plane", "kubectl -n "+ns+" logs "+p.Name+" -c "+SidecarContainer)
		case st.NACK != "":
			stale++
			add("sidecar of "+key, "fail", "rejected its config: "+st.NACK, "kubectl -n "+ns+" logs "+p.Name+" -c "+SidecarContainer)
		case st.AckedVersion != st.WantVersion:
			stale++
			add("sidecar of "+key, "warn", "not synced yet (acked "+st.AckedVersion+", current "+st.WantVersion+")", "run the check again in a few seconds")
		case !st.CertNotAfter.IsZero() && st.CertNotAfter.Before(c.now()):
			stale++
			add("sidecar of "+key, "fail", "its certificate expired "+st.CertNotAfter.Format(time.RFC3339), "kubectl -n "+ns+" logs "+p.Name+" -c "+SidecarContainer)
		}
	}
	if stale == 0 {
		add("sidecars connected and synced", "ok", fmt.Sprintf("%d injected pod(s)", injected), "")
	}
	for _, ns := range slices.Sorted(maps.Keys(needRestart)) {
		add("pods of "+ns+" without a sidecar", "warn", strings.Join(needRestart[ns], ", ")+" (created before injection was on)",
			"trellis restart-injected -n "+ns)
	}
	return out
}

func optedOut(p *corev1.Pod) bool {
	for _, k := range []string{"sidecar.istio.io/inject", "trellis.io/inject"} {
		if strings.EqualFold(p.Annotations[k], "false") || strings.EqualFold(p.Labels[k], "false") {
			return true
		}
	}
	return p.Spec.HostNetwork
}

// ProxyStatuses asks every control plane replica of namespace ns which
// proxies it serves, and returns them by "namespace/pod" (a proxy streams
// from one replica; the one it is connected to wins).
func ProxyStatuses(ctx context.Context, clients *kubeclient.Clients, ns string) (map[string]push.ProxyStatus, error) {
	answers, err := ControlPlaneGet(ctx, clients, ns, "/debug/proxies")
	if err != nil {
		return nil, err
	}
	out := map[string]push.ProxyStatus{}
	for pod, data := range answers {
		var sts []push.ProxyStatus
		if err := json.Unmarshal(data, &sts); err != nil {
			return nil, fmt.Errorf("control plane pod %s: %w", pod, err)
		}
		for _, s := range sts {
			key := s.Namespace + "/" + s.Pod
			if old, ok := out[key]; !ok || (s.Connected && !old.Connected) {
				out[key] = s
			}
		}
	}
	return out, nil
}

// ControlPlaneGet asks every running control plane pod of namespace ns
// for path on its metrics port (15014), through the API server's pod
// proxy, and returns the answers by pod name.
func ControlPlaneGet(ctx context.Context, clients *kubeclient.Clients, ns, path string) (map[string][]byte, error) {
	cs := clients.Client
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=trellis-control", FieldSelector: "status.phase=Running"})
	if err != nil {
		return nil, err
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("no control plane pod runs in %s", ns)
	}
	out := map[string][]byte{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		data, err := cs.CoreV1().Pods(ns).ProxyGet("http", p.Name, "15014", path, nil).DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("ask control plane pod %s: %w", p.Name, err)
		}
		out[p.Name] = data
	}
	return out, nil
}

func parseCerts(pemData []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("caBundle: %v", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("caBundle holds no certificate")
	}
	return out, nil
}

// RestartInjected restarts the Deployments, StatefulSets and DaemonSets of
// namespace ns whose running pods lack the sidecar injection would give
// them (as `kubectl rollout restart`), and returns what it restarted.
func RestartInjected(ctx context.Context, clients *kubeclient.Clients, ns string) ([]string, error) {
	cs := clients.Client
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if !Meshed(nsObj.Labels) {
		return nil, fmt.Errorf("namespace %s is not labelled for injection: kubectl label namespace %s trellis.io/inject=enabled", ns, ns)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	owners := map[string]bool{}
	for _, p := range pods.Items {
		if RunningPod(&p).Sidecar || optedOut(&p) || p.DeletionTimestamp != nil {
			continue
		}
		for _, o := range p.OwnerReferences {
			switch o.Kind {
			case "ReplicaSet":
				if d := deploymentOf(&p); d != "" {
					owners["Deployment/"+d] = true
				}
			case "StatefulSet", "DaemonSet":
				owners[o.Kind+"/"+o.Name] = true
			}
		}
	}
	patch := fmt.Appendf(nil, `{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	var done []string
	for _, o := range slices.Sorted(maps.Keys(owners)) {
		kind, name, _ := strings.Cut(o, "/")
		var err error
		switch kind {
		case "Deployment":
			_, err = cs.AppsV1().Deployments(ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		case "StatefulSet":
			_, err = cs.AppsV1().StatefulSets(ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		case "DaemonSet":
			_, err = cs.AppsV1().DaemonSets(ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		}
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("restart %s: %w", o, err)
		}
		done = append(done, o)
	}
	return done, nil
}
