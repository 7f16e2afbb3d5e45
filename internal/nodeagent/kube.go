package nodeagent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/netpolicy"
)

// KubeSource is a Source over a Kubernetes API server: the Namespaces,
// Pods and networking.k8s.io/v1 NetworkPolicies of every namespace,
// watched through informers. Only the pods of node are isolated here; the
// pods of other nodes are peers that selectors may name. Pods on the host
// network are left alone (NetworkPolicy does not apply to them), and so
// are pods that have finished.
func KubeSource(client kubernetes.Interface, node string) Source {
	return &kubeSource{client: client, node: node, changed: make(chan struct{}, 1), warned: map[string]string{}}
}

// kubeSettle: after a change, more changes are awaited this long before a
// snapshot is built (a rollout changes many pods at once).
const kubeSettle = 50 * time.Millisecond

type kubeSource struct {
	client  kubernetes.Interface
	node    string
	changed chan struct{} // buffered(1): an informer saw a change

	start          sync.Once
	started        error
	ns, pods, pols cache.Store // the informers' caches

	// Owned by the agent's goroutine (Next).
	version uint64
	last    netpolicy.Input
	warned  map[string]string // policy key -> the reason last logged
}

func (s *kubeSource) Next(ctx context.Context, version uint64, wait time.Duration) (Snapshot, error) {
	s.start.Do(func() { s.started = s.run(ctx) })
	if s.started != nil {
		return Snapshot{}, s.started
	}
	if version == s.version && s.version > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-s.changed:
			time.Sleep(kubeSettle)
			select {
			case <-s.changed:
			default:
			}
		}
		t.Stop()
	}
	in := s.input()
	if s.version == 0 || !reflect.DeepEqual(in, s.last) {
		s.version++
		s.last = in
	}
	return Snapshot{Version: s.version, Input: s.last}, nil
}

// run starts the informers for as long as ctx lives and waits for their
// first lists.
func (s *kubeSource) run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(s.client, 0)
	inf := []cache.SharedIndexInformer{f.Core().V1().Namespaces().Informer(), f.Core().V1().Pods().Informer(),
		f.Networking().V1().NetworkPolicies().Informer()}
	poke := func(any) {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
	for _, i := range inf {
		if _, err := i.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, DeleteFunc: poke,
			UpdateFunc: func(_, o any) { poke(o) }}); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	for _, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kubernetes: the namespaces, pods and network policies could not be listed (%v); check the agent's RBAC", ctx.Err())
		}
	}
	s.ns, s.pods, s.pols = inf[0].GetStore(), inf[1].GetStore(), inf[2].GetStore()
	return nil
}

// input is what the informers hold now, in the compiler's terms.
func (s *kubeSource) input() netpolicy.Input {
	in := netpolicy.Input{Namespaces: map[string]map[string]string{}}
	for _, o := range s.ns.List() {
		ns := o.(*corev1.Namespace)
		in.Namespaces[ns.Name] = ns.Labels
	}
	for _, o := range s.pods.List() {
		if pod, ok := policyPod(o.(*corev1.Pod), s.node); ok {
			in.Pods = append(in.Pods, pod)
		}
	}
	sort.Slice(in.Pods, func(i, j int) bool { return in.Pods[i].IP.Less(in.Pods[j].IP) })
	seen := map[string]bool{}
	for _, o := range s.pols.List() {
		np := o.(*networkingv1.NetworkPolicy)
		key := np.Namespace + "/" + np.Name
		seen[key] = true
		in.Policies = append(in.Policies, s.policy(np, key))
	}
	for key := range s.warned {
		if !seen[key] {
			delete(s.warned, key)
		}
	}
	sort.Slice(in.Policies, func(i, j int) bool {
		a, b := in.Policies[i], in.Policies[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return in
}

// policyPod is pod as a policy sees it; false for pods policies do not
// govern or that have no address.
func policyPod(pod *corev1.Pod, node string) (netpolicy.Pod, bool) {
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || !ip.Is4() || pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return netpolicy.Pod{}, false
	}
	p := netpolicy.Pod{Namespace: pod.Namespace, Name: pod.Name, IP: ip, Labels: pod.Labels, Remote: pod.Spec.NodeName != node}
	for _, c := range pod.Spec.Containers {
		for _, port := range c.Ports {
			p.Ports = append(p.Ports, catalog.ContainerPort{Name: port.Name, Port: port.ContainerPort, Protocol: catalog.Protocol(cmp.Or(port.Protocol, corev1.ProtocolTCP))})
		}
	}
	return p, true
}

// policy converts np. The tables are IPv4: an IPv6 ipBlock can match no
// packet they see, so it is left out, and a rule whose peers were all IPv6
// allows nothing. A policy that cannot be converted otherwise fails
// closed: its pods are isolated in its directions with nothing allowed,
// and the reason is logged once.
func (s *kubeSource) policy(np *networkingv1.NetworkPolicy, key string) *catalog.NetworkPolicy {
	out, err := manifest.NetworkPolicy(ipv4Only(np))
	if err == nil {
		delete(s.warned, key)
		return out
	}
	if s.warned[key] != err.Error() {
		s.warned[key] = err.Error()
		slog.Error("network policy cannot be enforced as written; its pods are isolated with nothing allowed until it is fixed", "policy", key, "err", err)
	}
	ingress, egress := directions(np)
	closed := &catalog.NetworkPolicy{Meta: catalog.Meta{Namespace: np.Namespace, Name: np.Name}, Ingress: ingress, Egress: egress}
	if sel, err := manifest.NetworkPolicy(&networkingv1.NetworkPolicy{ObjectMeta: np.ObjectMeta,
		Spec: networkingv1.NetworkPolicySpec{PodSelector: np.Spec.PodSelector}}); err == nil {
		closed.PodSelector = sel.PodSelector
	} // else the empty selector: every pod of the namespace
	return closed
}

// directions are the ones np isolates, defaulted as the API server does.
func directions(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress), slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
}

// ipv4Only is np without its IPv6 ipBlocks, and without the rules that
// named only those; its directions stay as they were.
func ipv4Only(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	out := np.DeepCopy()
	out.Spec.PolicyTypes = nil
	if ingress, egress := directions(np); ingress {
		out.Spec.PolicyTypes = append(out.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		if egress {
			out.Spec.PolicyTypes = append(out.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	} else if egress {
		out.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	}
	out.Spec.Ingress, out.Spec.Egress = nil, nil
	for _, r := range np.Spec.Ingress {
		if peers, ok := v4Peers(r.From); ok {
			r.From = peers
			out.Spec.Ingress = append(out.Spec.Ingress, *r.DeepCopy())
		}
	}
	for _, r := range np.Spec.Egress {
		if peers, ok := v4Peers(r.To); ok {
			r.To = peers
			out.Spec.Egress = append(out.Spec.Egress, *r.DeepCopy())
		}
	}
	return out
}

// v4Peers is peers without IPv6 ipBlocks; false when they named only
// those, so the rule allows nothing. No peers at all means every peer.
func v4Peers(peers []networkingv1.NetworkPolicyPeer) ([]networkingv1.NetworkPolicyPeer, bool) {
	if len(peers) == 0 {
		return nil, true
	}
	var v4 []networkingv1.NetworkPolicyPeer
	for _, p := range peers {
		if p.IPBlock != nil {
			if prefix, err := netip.ParsePrefix(p.IPBlock.CIDR); err == nil && prefix.Addr().Is6() {
				continue
			}
		}
		v4 = append(v4, p)
	}
	return v4, len(v4) > 0
}
