package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/manifest"
	routemodel "github.com/trellis-mesh/trellis/internal/route"
)

// meshLister is what `trellis get` reads: the one-host mesh's API, or a
// cluster's API server (clusterLister).
type meshLister interface {
	Pods(context.Context) ([]localmesh.PodStatus, error)
	Services(context.Context) ([]localmesh.ServiceStatus, error)
	NetworkPolicies(context.Context) ([]localmesh.NetworkPolicyStatus, error)
	Namespaces(context.Context) ([]localmesh.NamespaceStatus, error)
	Routes(context.Context) ([]localmesh.RouteStatus, error)
	DestinationRules(context.Context) ([]localmesh.DestinationRuleStatus, error)
}

// clusterLister reads a cluster's objects in the shapes one-host mode
// shows, with the denial counters of Trellis's node agents.
type clusterLister struct {
	kc        *kubeclient.Clients
	namespace string    // "" for every namespace
	trellisNS string    // where the node agents run
	warn      io.Writer // what could not be read, said but not fatal
}

var _ meshLister = (*clusterLister)(nil)

func (l *clusterLister) Pods(ctx context.Context) ([]localmesh.PodStatus, error) {
	pods, err := l.kc.Client.CoreV1().Pods(l.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []localmesh.PodStatus
	for _, p := range pods.Items {
		st := localmesh.PodStatus{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IP: p.Status.PodIP,
			Node: p.Spec.NodeName, Phase: string(p.Status.Phase), Created: p.CreationTimestamp.Time}
		statuses := p.Status.ContainerStatuses
		for _, s := range p.Status.InitContainerStatuses {
			for _, c := range p.Spec.InitContainers {
				if c.Name == s.Name && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
					statuses = append(statuses, s) // a native sidecar
				}
			}
		}
		ready := true
		for _, s := range statuses {
			cs := localmesh.ContainerStatus{Name: s.Name, Ready: s.Ready, Restarts: int(s.RestartCount)}
			switch {
			case s.State.Running != nil:
				cs.State = "running"
			case s.State.Waiting != nil:
				cs.State, cs.Reason = "waiting", s.State.Waiting.Reason
			case s.State.Terminated != nil:
				cs.State, cs.Reason, cs.ExitCode = "terminated", s.State.Terminated.Reason, int(s.State.Terminated.ExitCode)
			}
			if cs.Reason != "" && st.Phase != string(corev1.PodFailed) {
				st.Phase = cs.Reason // as kubectl's STATUS: CrashLoopBackOff, ErrImagePull...
			}
			ready = ready && s.Ready
			st.Containers = append(st.Containers, cs)
		}
		if p.DeletionTimestamp != nil {
			st.Phase = "Terminating"
		}
		st.Ready = ready && len(statuses) > 0
		out = append(out, st)
	}
	return out, nil
}

func (l *clusterLister) Services(ctx context.Context) ([]localmesh.ServiceStatus, error) {
	svcs, err := l.kc.Client.CoreV1().Services(l.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	slices, err := l.kc.Client.DiscoveryV1().EndpointSlices(l.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	ready := map[string][]string{} // namespace/service -> ready ip:port
	for _, es := range slices.Items {
		key := es.Namespace + "/" + es.Labels["kubernetes.io/service-name"]
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, addr := range ep.Addresses {
				for _, port := range es.Ports {
					if port.Port != nil {
						ready[key] = append(ready[key], fmt.Sprintf("%s:%d", addr, *port.Port))
					}
				}
			}
		}
	}
	var out []localmesh.ServiceStatus
	for _, s := range svcs.Items {
		st := localmesh.ServiceStatus{Namespace: s.Namespace, Name: s.Name, ClusterIP: s.Spec.ClusterIP, Selector: s.Spec.Selector,
			Endpoints: ready[s.Namespace+"/"+s.Name], Created: s.CreationTimestamp.Time}
		for _, p := range s.Spec.Ports {
			st.Ports = append(st.Ports, catalog.ServicePort{Name: p.Name, Protocol: catalog.Protocol(p.Protocol), Port: p.Port})
		}
		out = append(out, st)
	}
	return out, nil
}

func (l *clusterLister) NetworkPolicies(ctx context.Context) ([]localmesh.NetworkPolicyStatus, error) {
	nps, err := l.kc.Client.NetworkingV1().NetworkPolicies(l.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	denied := l.denied(ctx)
	var out []localmesh.NetworkPolicyStatus
	for _, np := range nps.Items {
		sel := metav1.FormatLabelSelector(&np.Spec.PodSelector)
		if sel == "<none>" {
			sel = "<all pods>"
		}
		st := localmesh.NetworkPolicyStatus{Namespace: np.Namespace, Name: np.Name, PodSelector: sel,
			DeniedIngress: denied["ingress/"+np.Namespace+"/"+np.Name], DeniedEgress: denied["egress/"+np.Namespace+"/"+np.Name],
			Created: np.CreationTimestamp.Time}
		for _, t := range policyTypes(np.Spec) {
			st.Types = append(st.Types, string(t))
		}
		out = append(out, st)
	}
	return out, nil
}

// policyTypes defaults as the API does: Ingress, and Egress when the
// policy has egress rules.
func policyTypes(spec networkingv1.NetworkPolicySpec) []networkingv1.PolicyType {
	if len(spec.PolicyTypes) > 0 {
		return spec.PolicyTypes
	}
	types := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	if len(spec.Egress) > 0 {
		types = append(types, networkingv1.PolicyTypeEgress)
	}
	return types
}

// denied sums the node agents' denied packets per direction and policy
// ("ingress/ns/name"), read through the API server's pod proxy. An agent
// that cannot be read is named on l.warn and counts nothing.
func (l *clusterLister) denied(ctx context.Context) map[string]uint64 {
	out := map[string]uint64{}
	agents, err := l.kc.Client.CoreV1().Pods(l.trellisNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + kube.NodeAgent})
	if err != nil {
		fmt.Fprintf(l.warn, "warning: the node agents in %s: %v; denial counts are missing\n", l.trellisNS, err)
		return out
	}
	for _, a := range agents.Items {
		body, err := agentMetrics(ctx, l.kc, l.trellisNS, a.Name)
		if err == nil {
			err = addDenied(out, body)
		}
		if err != nil {
			fmt.Fprintf(l.warn, "warning: node agent %s (node %s): %v; its denial counts are missing\n", a.Name, a.Spec.NodeName, err)
		}
	}
	return out
}

// maxAgentMetrics bounds what is read of a node agent's metrics.
const maxAgentMetrics = 4 << 20

// agentMetrics reads a node agent's /metrics through the API server's pod
// proxy, within 5 s (the API server sets no limit on proxied requests)
// and at most maxAgentMetrics bytes.
func agentMetrics(ctx context.Context, kc *kubeclient.Clients, namespace, pod string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := kc.Client.CoreV1().Pods(namespace).ProxyGet("http", pod, "15090", "metrics", nil).Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, maxAgentMetrics+1))
	if err == nil && len(body) > maxAgentMetrics {
		err = fmt.Errorf("node agent %s: metrics over %d bytes", pod, maxAgentMetrics)
	}
	return body, err
}

// addDenied adds the trellis_netpol_denied_packets_total series of a node
// agent's metrics to sums.
func addDenied(sums map[string]uint64, metrics []byte) error {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(metrics))
	if err != nil {
		return err
	}
	mf, ok := families["trellis_netpol_denied_packets_total"]
	if !ok {
		return nil
	}
	if mf.GetType() != dto.MetricType_COUNTER {
		return fmt.Errorf("trellis_netpol_denied_packets_total is a %s, not a counter", mf.GetType())
	}
	for _, m := range mf.GetMetric() {
		v := m.GetCounter().GetValue()
		if math.IsNaN(v) || v < 0 || v > math.MaxInt64 {
			continue
		}
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		key := strings.Join([]string{labels["direction"], labels["namespace"], labels["policy"]}, "/")
		sums[key] += uint64(v)
	}
	return nil
}

func (l *clusterLister) Namespaces(ctx context.Context) ([]localmesh.NamespaceStatus, error) {
	nss, err := l.kc.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []localmesh.NamespaceStatus
	for _, n := range nss.Items {
		out = append(out, localmesh.NamespaceStatus{Name: n.Name, Labels: n.Labels, Created: n.CreationTimestamp.Time})
	}
	return out, nil
}

// Routes lists the HTTPRoutes, GRPCRoutes and VirtualServices of the
// cluster with the status Trellis's control plane wrote back (its own
// entries; other controllers' are left out). A kind whose CRDs are not
// installed has none.
func (l *clusterLister) Routes(ctx context.Context) ([]localmesh.RouteStatus, error) {
	var out []localmesh.RouteStatus
	for _, gvrs := range [][]schema.GroupVersionResource{kube.HTTPRouteResources, kube.GRPCRouteResources, kube.VirtualServiceResources} {
		objs, err := l.listCustom(ctx, gvrs)
		if err != nil {
			return nil, err
		}
		for _, u := range objs {
			rs := localmesh.RouteStatus{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Created: u.GetCreationTimestamp().Time,
				Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{}}}
			rs.Hosts, _, _ = unstructured.NestedStringSlice(u.Object, "spec", "hosts")
			var st catalog.RouteStatus
			if err := fromUnstructured(u.Object["status"], &st); err != nil {
				fmt.Fprintf(l.warn, "warning: %s %s/%s: its status does not read: %v\n", rs.Kind, rs.Namespace, rs.Name, err)
			}
			for _, p := range st.Parents {
				if p.ControllerName == routemodel.ControllerName {
					rs.Status.Parents = append(rs.Status.Parents, p)
				}
			}
			out = append(out, rs)
		}
	}
	return out, nil
}

// DestinationRules lists the cluster's DestinationRules, each read as the
// control plane reads it; one it refuses is listed with a warning.
func (l *clusterLister) DestinationRules(ctx context.Context) ([]localmesh.DestinationRuleStatus, error) {
	objs, err := l.listCustom(ctx, kube.DestinationRuleResources)
	if err != nil {
		return nil, err
	}
	var out []localmesh.DestinationRuleStatus
	for _, u := range objs {
		dr := localmesh.DestinationRuleStatus{Namespace: u.GetNamespace(), Name: u.GetName(), Created: u.GetCreationTimestamp().Time}
		doc, err := kube.ManifestDoc(&u)
		if err == nil {
			var c *catalog.DestinationRule
			if c, err = manifest.DecodeDestinationRule(doc); err == nil {
				dr.Spec = c.Spec
			}
		}
		if err != nil {
			fmt.Fprintf(l.warn, "warning: DestinationRule %s/%s is not applied: %v\n", dr.Namespace, dr.Name, err)
			dr.Spec.Host, _, _ = unstructured.NestedString(u.Object, "spec", "host")
		}
		out = append(out, dr)
	}
	return out, nil
}

// listCustom lists the objects of each of gvrs the API server serves, in
// l's namespace, by namespace and name.
func (l *clusterLister) listCustom(ctx context.Context, gvrs []schema.GroupVersionResource) ([]unstructured.Unstructured, error) {
	var out []unstructured.Unstructured
	for _, gvr := range gvrs {
		list, err := l.kc.Dynamic.Resource(gvr).Namespace(l.namespace).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			continue // its CRD is not installed
		}
		if err != nil {
			return nil, err
		}
		slices.SortFunc(list.Items, func(a, b unstructured.Unstructured) int {
			return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
		})
		out = append(out, list.Items...)
	}
	return out, nil
}

// fromUnstructured decodes part of an unstructured object into v.
func fromUnstructured(part any, v any) error {
	if part == nil {
		return nil
	}
	b, err := json.Marshal(part)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
