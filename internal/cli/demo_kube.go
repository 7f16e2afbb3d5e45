package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	kubeexample "github.com/trellis-mesh/trellis/examples/kubernetes"
	"github.com/trellis-mesh/trellis/internal/install"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

// demoNamespaces are the namespaces the walkthrough creates (and deletes).
var demoNamespaces = []string{"db", "client-allow", "client-deny"}

// kubeDemo runs the walkthrough on a Kubernetes cluster: the manifests of
// examples/kubernetes, the clients' calls exec'd through the API server,
// the node agent's metrics and the dashboard read through its proxy.
type kubeDemo struct {
	*demoOptions
	kc      *kubeclient.Clients
	applier *kube.Applier
	values  install.Values
	// install is set when Trellis was not installed: up installs it and
	// down removes it again.
	install     bool
	trustDomain string
}

func newKubeDemo(ctx context.Context, d *demoOptions) (*kubeDemo, error) {
	v, verr := d.values.values()
	if verr != nil && (len(d.values.files) > 0 || len(d.values.sets) > 0) {
		return nil, verr
	}
	kc, err := kubeclient.Connect(d.cluster, "trellis-demo")
	if err != nil {
		return nil, err
	}
	applier, err := kube.NewApplier(kc.Config)
	if err != nil {
		return nil, err
	}
	k := &kubeDemo{demoOptions: d, kc: kc, applier: applier, values: v}
	_, err = kc.Client.AppsV1().Deployments(v.Namespace).Get(ctx, install.ControlPlane, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if verr != nil {
			return nil, fmt.Errorf("the demo cannot install Trellis, which is not installed: %w", verr)
		}
		k.install = true
	case err != nil:
		return nil, fmt.Errorf("the cluster at %s: %w (check --kubeconfig and --context)", kc.Config.Host, err)
	}
	for _, ns := range demoNamespaces {
		_, err := kc.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err == nil {
			return nil, fmt.Errorf("namespace %s already exists; the demo creates its namespaces and deletes them afterwards: "+
				"delete them first (kubectl delete namespace %s) or use another cluster", ns, strings.Join(demoNamespaces, " "))
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	return k, nil
}

func (k *kubeDemo) where() string { return "on the Kubernetes cluster at " + k.kc.Config.Host }

func (k *kubeDemo) clientID() string {
	return "spiffe://" + k.trustDomain + "/ns/client-allow/sa/default"
}

// curl: the demo image holds the trellis CLI only.
func (k *kubeDemo) curl() bool { return false }

func (k *kubeDemo) dashboard() string {
	return "`trellis dashboard --kubernetes` (it port-forwards " + dashboardURL(defaultDashboard) + " to the control plane)"
}

func (k *kubeDemo) keepHint() string {
	hint := "`trellis graph --kubernetes`, " + k.dashboard() + ", `kubectl get pods -A`; remove it with `kubectl delete namespace " + strings.Join(demoNamespaces, " ") + "`"
	if k.install {
		hint += " and `trellis uninstall`"
	}
	return hint
}

func (k *kubeDemo) up(ctx context.Context, r *demoRun) error {
	if k.install {
		r.say("install Trellis (trellis install, images %s/*:%s)", k.values.Image.Repository, k.values.Image.Tag)
		objs, err := installObjects(k.values)
		if err != nil {
			return err
		}
		if err := k.applier.Install(ctx, objs, true, io.Discard); err != nil {
			return err
		}
	}
	image, err := k.fromControlPlane(ctx)
	if err != nil {
		return err
	}
	r.say("apply examples/kubernetes/walkthrough.yaml (image %s): namespace db (injected) with demo-graph-alpha (v1 and v2) and demo-graph-zero; client-allow (injected, its calls to alpha routed to v2); client-deny (not injected)", image)
	objs, err := decodeObjects(kubeexample.Walkthrough)
	if err != nil {
		return err
	}
	for _, u := range objs {
		if err := setImage(u, image); err != nil {
			return err
		}
		labels := u.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[install.PartOf] = "trellis-demo"
		u.SetLabels(labels)
	}
	if err := k.applyAll(ctx, objs); err != nil {
		return err
	}
	pods, err := k.waitReady(ctx, demoPods, 3*time.Minute, image)
	if err != nil {
		return err
	}
	// Ready pods may still wait for the meshed client's sidecar to learn
	// the endpoints its route sends to: read from its config, so that no
	// call meets a sidecar still learning (its failure would count in the
	// graph of test 3). Then kube-proxy may still have to route the
	// Service for the other client: a first answer to each says all is.
	if err := k.waitRouted(ctx, time.Minute); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for _, ns := range []string{"client-allow", "client-deny"} {
		for {
			_, err := k.exec(ctx, ns, "trellis", "example", "graph-client", "health", "--http", alphaHTTP, "--timeout", "2s")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s cannot reach demo-graph-alpha a minute after its pods were ready (see `trellis check` and `kubectl -n db get endpointslices`): %v", ns, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
	r.say("workloads up: %s", strings.Join(pods, ", "))
	return nil
}

// fromControlPlane reads the installed control plane's trust domain and,
// unless --image gave it, the demo image.
func (k *kubeDemo) fromControlPlane(ctx context.Context) (string, error) {
	td, image, err := installedControlPlane(ctx, k.kc, k.values.Namespace)
	if err != nil {
		return "", err
	}
	k.trustDomain = td
	if k.image != "" {
		return k.image, nil
	}
	if image == "" {
		return "", errors.New("cannot tell the demo image from the control plane's: give it with --image")
	}
	return image, nil
}

// installedControlPlane reads the trust domain of the control plane
// installed in namespace and the trellis-demo image beside its image, with
// its tag (`trellis images build` makes both); demoImage is empty when the
// control plane's image is not named as those are.
func installedControlPlane(ctx context.Context, kc *kubeclient.Clients, namespace string) (trustDomain, demoImage string, err error) {
	dep, err := kc.Client.AppsV1().Deployments(namespace).Get(ctx, install.ControlPlane, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("the control plane: %w", err)
	}
	trustDomain = "cluster.local"
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Name != install.ControlPlane {
			continue
		}
		for i, a := range c.Args {
			if a == "--trust-domain" && i+1 < len(c.Args) {
				trustDomain = c.Args[i+1]
			}
		}
		if repo, tag, ok := strings.Cut(c.Image, "/"+install.ControlPlane+":"); ok {
			demoImage = repo + "/trellis-demo:" + tag
		}
	}
	return trustDomain, demoImage, nil
}

// decodeObjects reads a multi-document YAML manifest.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for i, doc := range splitYAML(data) {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
	return out, nil
}

// setImage sets the image of every container of a Pod or of a workload's
// pod template.
func setImage(u *unstructured.Unstructured, image string) error {
	path, ok := podTemplatePaths[u.GetKind()]
	if u.GetKind() == "Pod" {
		path, ok = nil, true
	}
	if !ok {
		return nil
	}
	path = append(slices.Clone(path), "spec", "containers")
	cs, _, err := unstructured.NestedSlice(u.Object, path...)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if m, ok := c.(map[string]any); ok {
			m["image"] = image
		}
	}
	return unstructured.SetNestedSlice(u.Object, cs, path...)
}

// applyAll applies objs in order, retrying for a while: a fresh
// namespace's default service account, which pods need, comes a moment
// after the namespace.
func (k *kubeDemo) applyAll(ctx context.Context, objs []*unstructured.Unstructured) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, u := range objs {
		for {
			err := k.applier.Apply(ctx, u)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}

// waitReady waits until want pods of the demo's namespaces are ready, and
// gives up early when their image cannot be had.
func (k *kubeDemo) waitReady(ctx context.Context, want int, limit time.Duration, image string) ([]string, error) {
	deadline := time.Now().Add(limit)
	for {
		var names, waiting []string
		for _, ns := range demoNamespaces {
			pods, err := k.kc.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err
			}
			for _, p := range pods.Items {
				ready, total, reason := podReadiness(&p)
				if cannotPull(reason) {
					return nil, fmt.Errorf("pod %s/%s cannot have its image (%s): build and load them with `trellis images build --load-into-k8sbed` (the test bed), "+
						"or push them (`trellis images build --push REGISTRY`) and give the demo's with --image (now %s)", ns, p.Name, reason, image)
				}
				if ready == total && p.DeletionTimestamp == nil {
					names = append(names, fmt.Sprintf("%s/%s %d/%d", ns, p.Name, ready, total))
				} else {
					waiting = append(waiting, fmt.Sprintf("%s/%s %d/%d %s", ns, p.Name, ready, total, reason))
				}
			}
		}
		if len(names) == want && len(waiting) == 0 {
			return names, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d demo pods ready after %s (waiting: %s; see kubectl describe pods -n db)", len(names), want, limit, strings.Join(waiting, ", "))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// cannotPull says whether a container waits for an image it cannot have.
func cannotPull(reason string) bool {
	switch reason {
	case "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName":
		return true
	}
	return false
}

// podReadiness counts p's ready containers as kubectl's READY does
// (native sidecars included), with the reason a container waits, if one
// does.
func podReadiness(p *corev1.Pod) (ready, total int, reason string) {
	count := func(ss []corev1.ContainerStatus) {
		for _, s := range ss {
			total++
			if s.Ready {
				ready++
			}
			if s.State.Waiting != nil && s.State.Waiting.Reason != "" {
				reason = s.State.Waiting.Reason
			}
		}
	}
	count(p.Status.ContainerStatuses)
	for _, s := range p.Status.InitContainerStatuses {
		for _, c := range p.Spec.InitContainers {
			if c.Name == s.Name && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				count([]corev1.ContainerStatus{s})
			}
		}
	}
	if total == 0 {
		total = len(p.Spec.Containers)
	}
	return ready, total, reason
}

// exec runs a command in the client pod of namespace ns through the API
// server, as kubectl exec does.
func (k *kubeDemo) exec(ctx context.Context, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout+k.traffic+10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := kube.Exec(ctx, k.kc, ns, "client", "client", args, &stdout, &stderr); err != nil {
		return stdout.String(), commandError(stderr.String(), err)
	}
	return stdout.String(), nil
}

// waitRouted waits until the meshed client's sidecar has an endpoint on
// every port of the Service its route sends alpha's calls to, reading its
// config through a port-forward to its admin port.
func (k *kubeDemo) waitRouted(ctx context.Context, limit time.Duration) error {
	get, stop, err := forwardAdmin(ctx, k.kc, "client-allow", "client", io.Discard)
	if err != nil {
		return err
	}
	defer stop()
	const backend = "db/demo-graph-alpha-v2"
	for deadline := time.Now().Add(limit); !configRoutes(get, backend); {
		if time.Now().After(deadline) {
			return fmt.Errorf("the sidecar of client-allow/client has no endpoints of %s after %s (see `trellis proxy-status --kubernetes` and `trellis proxy-config --kubernetes -n client-allow client`)", backend, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// enforce applies policy.yaml and waits until the node agent of the
// database's node has it in the kernel (its rule count, read through the
// API server's pod proxy, changes).
func (k *kubeDemo) enforce(ctx context.Context) error {
	alpha, err := k.kc.Client.CoreV1().Pods("db").List(ctx, metav1.ListOptions{LabelSelector: "app=demo-graph-alpha"})
	if err != nil || len(alpha.Items) == 0 {
		return fmt.Errorf("the database's pod: %v", err)
	}
	node := alpha.Items[0].Spec.NodeName
	agents, err := k.kc.Client.CoreV1().Pods(k.values.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + kube.NodeAgent,
		FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return err
	}
	if len(agents.Items) == 0 {
		return fmt.Errorf("no node agent runs on node %s, so nothing enforces the policy there: install Trellis with its node agent (--set nodeAgent.enabled=true)", node)
	}
	agent := agents.Items[0].Name
	rules := func(ctx context.Context) (float64, error) {
		body, err := agentMetrics(ctx, k.kc, k.values.Namespace, agent)
		if err != nil {
			return 0, err
		}
		return rulesGauge(body)
	}
	before, _ := rules(ctx)
	objs, err := decodeObjects(kubeexample.Policy)
	if err != nil {
		return err
	}
	for _, u := range objs {
		if err := k.applier.Apply(ctx, u); err != nil {
			return fmt.Errorf("apply the policy: %w", err)
		}
	}
	return waitRulesChange(ctx, before, rules, fmt.Sprintf("see kubectl -n %s logs %s", k.values.Namespace, agent))
}

func (k *kubeDemo) authorize(ctx context.Context) error {
	objs, err := decodeObjects(kubeexample.Authz)
	if err != nil {
		return err
	}
	for _, u := range objs {
		if err := k.applier.Apply(ctx, u); err != nil {
			return fmt.Errorf("apply the AuthorizationPolicy: %w", err)
		}
	}
	return nil
}

func (k *kubeDemo) graph(ctx context.Context, window time.Duration, namespaces []string) (*servicegraph.Graph, error) {
	return clusterGraph(ctx, k.kc, k.values.Namespace, window, namespaces)
}

// down deletes the demo's namespaces and, when the demo installed Trellis,
// uninstalls it.
func (k *kubeDemo) down(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	errs := []error{deleteNamespaces(ctx, k.applier, demoNamespaces)}
	if k.install {
		objs, err := installObjects(k.values)
		if err == nil {
			err = k.applier.Uninstall(ctx, objs, io.Discard)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteNamespaces deletes namespaces and waits until they are gone.
func deleteNamespaces(ctx context.Context, applier *kube.Applier, names []string) error {
	var errs []error
	var gone []*unstructured.Unstructured
	for _, ns := range names {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("v1")
		u.SetKind("Namespace")
		u.SetName(ns)
		if _, err := applier.Delete(ctx, u, false); err != nil {
			errs = append(errs, err)
		}
		gone = append(gone, u)
	}
	for _, u := range gone {
		if err := applier.WaitGone(ctx, u); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
