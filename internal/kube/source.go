package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/discovery"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

// SidecarContainer is the name of the proxy's container in an injected
// pod (a native sidecar: an init container that keeps running).
const SidecarContainer = "trellis-proxy"

// PeerAuthenticationResources are the groups a PeerAuthentication is read
// from: Trellis's own, and Istio's when its CRDs are installed (the same
// schema, see docs/kubernetes.md).
var PeerAuthenticationResources = []schema.GroupVersionResource{
	{Group: "security.trellis.io", Version: "v1", Resource: "peerauthentications"},
	{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
}

// AuthorizationPolicyResources are the groups an AuthorizationPolicy is
// read from, as PeerAuthenticationResources.
var AuthorizationPolicyResources = []schema.GroupVersionResource{
	{Group: "security.trellis.io", Version: "v1", Resource: "authorizationpolicies"},
	{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
}

// RequestAuthenticationResources are the groups a RequestAuthentication
// is read from, as PeerAuthenticationResources.
var RequestAuthenticationResources = []schema.GroupVersionResource{
	{Group: "security.trellis.io", Version: "v1", Resource: "requestauthentications"},
	{Group: "security.istio.io", Version: "v1", Resource: "requestauthentications"},
}

// HTTPRouteResources and GRPCRouteResources are the Gateway API routes
// read (the operator installs the Gateway API's CRDs).
var (
	HTTPRouteResources = []schema.GroupVersionResource{{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}}
	GRPCRouteResources = []schema.GroupVersionResource{{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"}}
)

// VirtualServiceResources and DestinationRuleResources are the groups
// Istio's traffic rules are read from, as PeerAuthenticationResources.
var (
	VirtualServiceResources = []schema.GroupVersionResource{
		{Group: "networking.trellis.io", Version: "v1", Resource: "virtualservices"},
		{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"},
	}
	DestinationRuleResources = []schema.GroupVersionResource{
		{Group: "networking.trellis.io", Version: "v1", Resource: "destinationrules"},
		{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"},
	}
)

// StatusLeaseName is the Lease, in the control plane's namespace, that
// elects the replica writing routes' status.
const StatusLeaseName = "trellis-route-status"

// Source is a discovery.Source fed by informers on the API server:
// Namespaces, Pods, Services, the EndpointSlices of Services without a
// selector, PeerAuthentications, AuthorizationPolicies,
// RequestAuthentications, HTTPRoutes, GRPCRoutes, VirtualServices and
// DestinationRules, of every namespace, become catalog snapshots,
// published at most once per Settle after a burst of changes (scaling a
// Deployment changes many pods at once). A custom resource that does not
// decode is left out of the snapshots and logged once; a route's status
// says so too. The status of every route and VirtualService that changed
// is written back, off the snapshots' path: a burst of writes holds up no
// config, and only the latest snapshot's statuses are written.
type Source struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Settle is how long changes are gathered before a snapshot is
	// built. Default 50 ms; the control plane debounces its pushes too.
	Settle time.Duration
	// Resync lists everything again this often, repairing a missed event.
	// Default 10 minutes.
	Resync time.Duration
	// Rediscover is how often the API server is asked which of the
	// custom resources above it serves, so that CRDs installed later are
	// watched without a restart. Default 30 s.
	Rediscover time.Duration
	// StatusLease, when set, is the Lease (namespace/name) that elects
	// the one replica writing routes' status, as Identity; without it,
	// every Source writes.
	StatusLease struct{ Namespace, Name, Identity string }
}

var _ discovery.Source = (*Source)(nil)

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, publish func(*catalog.Snapshot)) error {
	settle := cmp.Or(s.Settle, 50*time.Millisecond)
	resync := cmp.Or(s.Resync, 10*time.Minute)
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	f := informers.NewSharedInformerFactory(s.Client, resync)
	nsInf, podInf, svcInf := f.Core().V1().Namespaces(), f.Core().V1().Pods(), f.Core().V1().Services()
	// EndpointSlices matter only for Services without a selector (the
	// endpoints of the others come from their pods): the slices the
	// endpoint controller keeps, which follow every pod, are not watched.
	sf := informers.NewSharedInformerFactoryWithOptions(s.Client, resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelManagedBy + "!=" + endpointSliceController
	}))
	sliceInf := sf.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{nsInf.Informer(), podInf.Informer(), svcInf.Informer(), sliceInf.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	sf.Start(ctx.Done())
	defer f.Shutdown()
	defer sf.Shutdown()
	for _, synced := range []map[reflect.Type]bool{f.WaitForCacheSync(ctx.Done()), sf.WaitForCacheSync(ctx.Done())} {
		for typ, ok := range synced {
			if !ok {
				return ignoreDone(ctx, fmt.Errorf("kubernetes: informer for %v did not sync", typ))
			}
		}
	}
	df := dynamicinformer.NewDynamicSharedInformerFactory(s.Dynamic, resync)
	defer df.Shutdown()
	pas, aps, ras := &kindWatch{gvrs: PeerAuthenticationResources}, &kindWatch{gvrs: AuthorizationPolicyResources}, &kindWatch{gvrs: RequestAuthenticationResources}
	hrs, grs := &kindWatch{gvrs: HTTPRouteResources}, &kindWatch{gvrs: GRPCRouteResources}
	vss, drs := &kindWatch{gvrs: VirtualServiceResources}, &kindWatch{gvrs: DestinationRuleResources}
	cw := &customWatch{factory: df, handler: handler, served: s.served, kinds: []*kindWatch{pas, aps, ras, hrs, grs, vss, drs}}
	if err := cw.start(ctx); err != nil {
		return err
	}
	for gvr, ok := range df.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return ignoreDone(ctx, fmt.Errorf("kubernetes: informer for %v did not sync", gvr))
		}
	}
	rediscover := time.NewTicker(cmp.Or(s.Rediscover, 30*time.Second))
	defer rediscover.Stop()
	var lease resourcelock.Interface
	if l := s.StatusLease; l.Name != "" {
		lease = &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
			Client: s.Client.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity}}
	}
	status := newStatusWriter(s.Dynamic, lease)
	go status.run(ctx)
	var version uint64
	warned := newWarnings()
	for {
		cw.adopt()
		version++
		snap := &catalog.Snapshot{Version: version, Time: time.Now()}
		nss, _ := nsInf.Lister().List(labels.Everything())
		for _, ns := range nss {
			snap.Namespaces = append(snap.Namespaces, &catalog.Namespace{Meta: meta(ns.Name, "", ns.Labels, ns.Annotations)})
		}
		svcs, _ := svcInf.Lister().List(labels.Everything())
		for _, svc := range svcs {
			if c := Service(svc); c != nil {
				if len(c.Selector) == 0 {
					listed, _ := sliceInf.Lister().EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
					c.Endpoints = ListedEndpoints(listed)
				}
				snap.Services = append(snap.Services, c)
			}
		}
		pods, _ := podInf.Lister().List(labels.Everything())
		for _, p := range pods {
			snap.Pods = append(snap.Pods, RunningPod(p))
		}
		snap.PeerAuthentications = decodeListed(pas.listers, "PeerAuthentication", manifest.DecodePeerAuthentication, warned)
		snap.AuthorizationPolicies = decodeListedOr(aps.listers, "AuthorizationPolicy", manifest.DecodeAuthorizationPolicy, denyInScope, warned)
		snap.RequestAuthentications = decodeListed(ras.listers, "RequestAuthentication", manifest.DecodeRequestAuthentication, warned)
		snap.DestinationRules = decodeListed(drs.listers, "DestinationRule", manifest.DecodeDestinationRule, warned)
		routes := listRoutes(snap, [][]gvrLister{hrs.listers, grs.listers, vss.listers}, warned)
		warned.next()
		sortSnapshot(snap)
		publish(snap)
		status.offer(routes, snap)
		// On a tick: watch what is newly served, and build a snapshot when
		// an informer started earlier has filled its cache (its first
		// objects may have come before it said so).
		tick := func() (bool, error) {
			err := cw.start(ctx)
			return cw.synced(), err
		}
		if err := waitForChange(ctx, changed, rediscover.C, tick); err != nil || ctx.Err() != nil {
			return err
		}
		select { // gather the rest of the burst
		case <-ctx.Done():
			return nil
		case <-time.After(settle):
		}
	}
}

// waitForChange returns when an informer reports a change, or onTick
// says, on a tick, that there is something new to read; an error only
// when onTick fails.
func waitForChange(ctx context.Context, changed <-chan struct{}, tick <-chan time.Time, onTick func() (bool, error)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			return nil
		case <-tick:
			if rebuild, err := onTick(); err != nil || rebuild {
				return err
			}
		}
	}
}

// kindWatch is one kind of custom resource, read from whichever of its
// groups the API server serves.
type kindWatch struct {
	gvrs    []schema.GroupVersionResource
	listers []gvrLister // of the groups watched, in the order found
}

// customWatch starts informers for the custom resources of kinds, in the
// groups the API server serves: at start, and later for CRDs installed
// after the control plane started. Each is read (adopt) once its cache is
// filled, so that a group whose list keeps failing (its rights not
// granted) holds up no snapshot.
type customWatch struct {
	factory dynamicinformer.DynamicSharedInformerFactory
	handler cache.ResourceEventHandler
	served  func([]schema.GroupVersionResource) []schema.GroupVersionResource
	kinds   []*kindWatch
	pending []pendingWatch
}

// start starts an informer for each resource served and not watched yet.
func (cw *customWatch) start(ctx context.Context) error {
	started := false
	for _, k := range cw.kinds {
		for _, gvr := range cw.served(k.gvrs) {
			if k.watching(gvr) || slices.ContainsFunc(cw.pending, func(p pendingWatch) bool { return p.gvr == gvr }) {
				continue
			}
			inf := cw.factory.ForResource(gvr)
			if _, err := inf.Informer().AddEventHandler(cw.handler); err != nil {
				return err
			}
			cw.pending = append(cw.pending, pendingWatch{k, gvr, inf})
			started = true
		}
	}
	if started {
		cw.factory.Start(ctx.Done())
	}
	return nil
}

// adopt reads, from now on, the resources whose cache is filled.
func (cw *customWatch) adopt() {
	cw.pending = slices.DeleteFunc(cw.pending, func(p pendingWatch) bool {
		if !p.inf.Informer().HasSynced() {
			return false
		}
		p.kind.listers = append(p.kind.listers, gvrLister{p.gvr, p.inf.Lister()})
		return true
	})
}

// synced reports whether a started informer is ready to be adopted.
func (cw *customWatch) synced() bool {
	return slices.ContainsFunc(cw.pending, func(p pendingWatch) bool { return p.inf.Informer().HasSynced() })
}

// pendingWatch is an informer started for a kind's group, not read until
// its cache is filled.
type pendingWatch struct {
	kind *kindWatch
	gvr  schema.GroupVersionResource
	inf  informers.GenericInformer
}

// gvrLister lists the objects of one resource.
type gvrLister struct {
	gvr schema.GroupVersionResource
	cache.GenericLister
}

func (k *kindWatch) watching(gvr schema.GroupVersionResource) bool {
	return slices.ContainsFunc(k.listers, func(l gvrLister) bool { return l.gvr == gvr })
}

// served are the resources of gvrs the API server serves (Istio's only
// when its CRDs are installed).
func (s *Source) served(gvrs []schema.GroupVersionResource) []schema.GroupVersionResource {
	var out []schema.GroupVersionResource
	for _, gvr := range gvrs {
		res, err := s.Client.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
		if err != nil {
			continue
		}
		if slices.ContainsFunc(res.APIResources, func(r metav1.APIResource) bool { return r.Name == gvr.Resource }) {
			out = append(out, gvr)
		}
	}
	return out
}

func ignoreDone(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func meta(name, namespace string, l, a map[string]string) catalog.Meta {
	return catalog.Meta{Name: name, Namespace: namespace, Labels: l, Annotations: a}
}

// Service is the catalog's view of svc, or nil for a Service without a
// cluster IP (headless or ExternalName): there is no address to capture.
func Service(svc *corev1.Service) *catalog.Service {
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return nil
	}
	c := &catalog.Service{Meta: meta(svc.Name, svc.Namespace, svc.Labels, svc.Annotations), Selector: svc.Spec.Selector, ClusterIP: ip}
	for _, p := range svc.Spec.Ports {
		sp := catalog.ServicePort{Name: p.Name, Protocol: catalog.Protocol(p.Protocol), Port: p.Port}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		switch {
		case p.TargetPort.StrVal != "":
			sp.TargetPortName = p.TargetPort.StrVal
		case p.TargetPort.IntVal != 0:
			sp.TargetPort = p.TargetPort.IntVal
		default:
			sp.TargetPort = p.Port
		}
		c.Ports = append(c.Ports, sp)
	}
	return c
}

// endpointSliceController is the managed-by label of the slices
// Kubernetes keeps for Services with a selector.
const endpointSliceController = "endpointslice-controller.k8s.io"

// ListedEndpoints are the IPv4 endpoints EndpointSlices list for a Service
// without a selector, with the port of each service port by name. An
// endpoint whose ready condition is unset counts as ready, as the API
// defines it.
func ListedEndpoints(slices []*discoveryv1.EndpointSlice) []catalog.ServiceEndpoint {
	var out []catalog.ServiceEndpoint
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		ports := map[string]int32{}
		for _, p := range sl.Ports {
			if p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				ports[ptrOr(p.Name, "")] = *p.Port
			}
		}
		for _, e := range sl.Endpoints {
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
					out = append(out, catalog.ServiceEndpoint{IP: ip, Ready: e.Conditions.Ready == nil || *e.Conditions.Ready, Ports: ports})
				}
			}
		}
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// RunningPod is the catalog's view of p: its labels, service account,
// container ports (for named target ports), owning Deployment, address
// and readiness, and whether it was injected with a sidecar.
func RunningPod(p *corev1.Pod) *catalog.RunningPod {
	cp := &catalog.Pod{Meta: meta(p.Name, p.Namespace, p.Labels, p.Annotations), Owner: deploymentOf(p)}
	cp.Spec.ServiceAccount = p.Spec.ServiceAccountName
	if cp.Spec.ServiceAccount == "" {
		cp.Spec.ServiceAccount = "default"
	}
	rp := &catalog.RunningPod{Pod: cp, UID: string(p.UID)}
	for _, c := range p.Spec.Containers {
		cc := catalog.Container{Name: c.Name, Image: c.Image}
		for _, port := range c.Ports {
			cc.Ports = append(cc.Ports, catalog.ContainerPort{Name: port.Name, Port: port.ContainerPort, Protocol: catalog.Protocol(port.Protocol)})
		}
		cp.Spec.Containers = append(cp.Spec.Containers, cc)
	}
	for _, c := range p.Spec.InitContainers {
		if c.Name == SidecarContainer {
			rp.Sidecar = true
		}
	}
	if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil {
		rp.IP = ip
	}
	if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				rp.Ready = true
			}
		}
	}
	return rp
}

// deploymentOf names the Deployment that owns p through a ReplicaSet
// (NAME-HASH, the hash also in the pod's pod-template-hash label), or
// "" when p has none.
func deploymentOf(p *corev1.Pod) string {
	hash := p.Labels["pod-template-hash"]
	for _, o := range p.OwnerReferences {
		if o.Kind == "ReplicaSet" && hash != "" {
			if name, ok := strings.CutSuffix(o.Name, "-"+hash); ok {
				return name
			}
		}
	}
	return ""
}

// warnings remembers, by object, the problem last logged about it, so
// that each is logged once however many snapshots meet it; an object
// gone or mended is forgotten at the next snapshot.
type warnings struct{ logged, seen map[string]string }

func newWarnings() *warnings {
	return &warnings{logged: map[string]string{}, seen: map[string]string{}}
}

// once notes err about the object u of kind and reports whether it is
// new: to be logged.
func (w *warnings) once(kind string, u *unstructured.Unstructured, err error) bool {
	key := kind + " " + u.GetAPIVersion() + " " + u.GetNamespace() + "/" + u.GetName()
	w.seen[key] = err.Error()
	return w.logged[key] != err.Error()
}

// next ends a snapshot: what it did not meet is forgotten.
func (w *warnings) next() {
	w.logged, w.seen = w.seen, map[string]string{}
}

// decodeListed decodes every object ls hold, custom resources of kind,
// with decode (a manifest decoder: the rules of one-host manifests). An
// object that does not decode is left out and logged, once (warned
// remembers it across snapshots).
func decodeListed[T any](ls []gvrLister, kind string, decode func(doc []byte) (T, error), warned *warnings) []T {
	return decodeListedOr(ls, kind, decode, nil, warned)
}

// decodeListedOr is decodeListed, with instead standing in for an object
// that does not decode, when it gives one.
func decodeListedOr[T any](ls []gvrLister, kind string, decode func(doc []byte) (T, error),
	instead func(*unstructured.Unstructured) (T, bool), warned *warnings) []T {
	var out []T
	for _, l := range ls {
		objs, _ := l.List(labels.Everything())
		for _, o := range objs {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			v, err := decodeObject(u, kind, decode)
			if err == nil {
				out = append(out, v)
				continue
			}
			if instead != nil {
				if v, ok := instead(u); ok {
					out = append(out, v)
					if warned.once(kind, u, err) {
						slog.Error(kind+" cannot be enforced as written: every request in its scope is denied until it is fixed", "err", err)
					}
					continue
				}
			}
			if warned.once(kind, u, err) {
				slog.Warn(kind+" ignored", "err", err)
			}
		}
	}
	return out
}

// denyInScope stands in for an AuthorizationPolicy the control plane
// cannot enforce as written (the API server's schema does not refuse
// everything the policy engine does): it fails closed, denying every
// request in the policy's scope, its selector when that is readable,
// else its whole namespace. Dropping it instead could lift a DENY, or
// leave a workload whose only ALLOW it was open to all.
func denyInScope(u *unstructured.Unstructured) (*catalog.AuthorizationPolicy, bool) {
	p := &catalog.AuthorizationPolicy{Meta: meta(u.GetName(), u.GetNamespace(), u.GetLabels(), u.GetAnnotations()),
		Spec: catalog.AuthorizationSpec{Action: catalog.AuthorizationDeny, Rules: []catalog.AuthorizationRule{{}}}}
	if sel, ok, err := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels"); ok && err == nil && len(sel) > 0 {
		if _, refs, _ := unstructured.NestedSlice(u.Object, "spec", "targetRefs"); !refs {
			p.Spec.Selector = &catalog.WorkloadSelector{MatchLabels: sel}
		}
	}
	return p, true
}

// decodeObject decodes o, a custom resource of kind a dynamic informer
// listed, with decode, keeping the age and generation the API server
// gave it; the error names the object.
func decodeObject[T any](o any, kind string, decode func(doc []byte) (T, error)) (T, error) {
	var zero T
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return zero, fmt.Errorf("%s: unexpected object %T", kind, o)
	}
	doc, err := ManifestDoc(u)
	if err != nil {
		return zero, fmt.Errorf("%s %s/%s: %w", kind, u.GetNamespace(), u.GetName(), err)
	}
	v, err := decode(doc)
	if err != nil {
		return zero, fmt.Errorf("%s %s/%s: %w", kind, u.GetNamespace(), u.GetName(), err)
	}
	if o, ok := any(v).(interface{ ObjectMeta() *catalog.Meta }); ok {
		m := o.ObjectMeta()
		m.CreationTimestamp, m.Generation = u.GetCreationTimestamp().Time, u.GetGeneration()
	}
	return v, nil
}

// ManifestDoc is u as a manifest would write it, in JSON: its apiVersion,
// kind, spec, and the metadata a manifest gives (name, namespace, labels,
// annotations); what the API server adds (status, uid, managedFields...)
// is left out.
func ManifestDoc(u *unstructured.Unstructured) ([]byte, error) {
	content := u.UnstructuredContent()
	doc := map[string]any{"apiVersion": content["apiVersion"], "kind": content["kind"], "spec": content["spec"],
		"metadata": map[string]any{"name": u.GetName(), "namespace": u.GetNamespace(), "labels": u.GetLabels(), "annotations": u.GetAnnotations()}}
	return json.Marshal(doc)
}

func sortSnapshot(s *catalog.Snapshot) {
	slices.SortFunc(s.Namespaces, func(a, b *catalog.Namespace) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Services, func(a, b *catalog.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	slices.SortFunc(s.Pods, func(a, b *catalog.RunningPod) int { return strings.Compare(a.Key(), b.Key()) })
	slices.SortFunc(s.PeerAuthentications, func(a, b *catalog.PeerAuthentication) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	slices.SortFunc(s.AuthorizationPolicies, func(a, b *catalog.AuthorizationPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	slices.SortFunc(s.RequestAuthentications, func(a, b *catalog.RequestAuthentication) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	slices.SortStableFunc(s.DestinationRules, func(a, b *catalog.DestinationRule) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
}
