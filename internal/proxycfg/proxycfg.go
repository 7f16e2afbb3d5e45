// Package proxycfg is the pure translation from the mesh's state to what a
// proxy runs on: (catalog.Snapshot, the proxy's pod) -> meshpb.ProxyConfig.
// It does no I/O and keeps no state; the same input always gives the same
// output, which golden tests pin (go test -update rewrites them).
//
// The control plane (internal/push) imports it, and the one-host runtime
// for route status; the proxy never does.
package proxycfg

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// ExportTo is Istio's Service annotation that limits which namespaces'
// proxies see the service: "*" (the default) every namespace, "." the
// service's own, or a comma-separated list of namespace names (and ".").
const ExportTo = "networking.istio.io/exportTo"

// Rendered is what every proxy shares from one snapshot: the services,
// each service's content hash (to send only what changed), and per
// namespace the services its proxies see, with a digest of them. Safe for
// concurrent use; its messages must not be modified.
type Rendered struct {
	// Services carry the DestinationRule of their own namespace (or a
	// root namespace's); a namespace with a rule of its own for one sees
	// it in its View instead.
	Services []*meshpb.Service
	Hashes   map[string]string   // by ServiceKey, of Services
	exports  map[string][]string // by ServiceKey: namespaces that see it; nil for all
	rules    ruleIndex
	snap     *catalog.Snapshot // what it was rendered from, for each View's routes

	mu    sync.Mutex
	views map[string]*View // guarded by mu: by namespace
}

// View is what the proxies of one namespace see.
type View struct {
	Services []*meshpb.Service
	// Hashes are the content hashes of Services, by ServiceKey: a
	// service's differs from Rendered's when the namespace has a
	// DestinationRule of its own for it, so an update compares these.
	Hashes map[string]string
	// Digest is a hash of Hashes and RouteHashes: the part of a proxy's
	// config version its namespace decides.
	Digest string
	// Routes are the routes Routes picks for the namespace's proxies,
	// and RouteHashes their content hashes by meshpb.Route.Key, so an
	// update compares these: computed once per namespace, as services.
	Routes      []*meshpb.Route
	RouteHashes map[string]string
	routesErr   error
}

// Render renders every service of snap that has a VIP, each with its TCP
// ports and their ready endpoints, sorted by namespace and name. Endpoints
// with a sidecar carry the identity their proxy must present. The result
// is the same for every proxy, so the control plane computes it once per
// snapshot; a namespace's proxies see their own DestinationRules' changes
// (For).
func Render(snap *catalog.Snapshot, trustDomain string) *Rendered {
	r := &Rendered{Hashes: map[string]string{}, exports: map[string][]string{}, views: map[string]*View{}, rules: indexRules(snap), snap: snap}
	for _, svc := range snap.Services {
		if !svc.ClusterIP.IsValid() {
			continue
		}
		s := &meshpb.Service{Namespace: svc.Namespace, Name: svc.Name, Vip: svc.ClusterIP.String()}
		for _, sp := range svc.Ports {
			if sp.Protocol != catalog.TCP {
				continue // the proxy handles TCP; UDP passes by
			}
			port := &meshpb.ServicePort{Port: uint32(sp.Port), Name: sp.Name, Protocol: PortProtocol(sp)}
			port.Endpoints = endpoints(snap, svc, sp, trustDomain)
			s.Ports = append(s.Ports, port)
		}
		if dr := r.rules.forService(s); dr != nil {
			applyRule(s, dr)
		}
		r.Services = append(r.Services, s)
		r.exports[ServiceKey(s)] = exportedTo(svc)
	}
	sort.Slice(r.Services, func(i, j int) bool { return ServiceKey(r.Services[i]) < ServiceKey(r.Services[j]) })
	for _, s := range r.Services {
		r.Hashes[ServiceKey(s)] = Hash(s)
	}
	return r
}

// exportedTo reads a service's exportTo annotation: nil for every
// namespace.
func exportedTo(svc *catalog.Service) []string {
	v, ok := svc.Annotations[ExportTo]
	if !ok {
		return nil
	}
	var out []string
	for _, ns := range strings.Split(v, ",") {
		switch ns = strings.TrimSpace(ns); ns {
		case "*":
			return nil
		case ".":
			out = append(out, svc.Namespace)
		case "":
		default:
			out = append(out, ns)
		}
	}
	return append(out, svc.Namespace) // a service is always visible in its own namespace
}

// For returns what the proxies of namespace ns see, computed once per
// namespace: the services exported to ns, each with the DestinationRule
// Istio would pick for a client in ns (its own namespace's first), and
// the routes that apply to them there.
func (r *Rendered) For(ns string) *View {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v := r.views[ns]; v != nil {
		return v
	}
	v := &View{Hashes: map[string]string{}}
	all := fnv.New64a()
	for _, s := range r.Services {
		k := ServiceKey(s)
		if ex := r.exports[k]; ex != nil && !slices.Contains(ex, ns) {
			continue
		}
		h := r.Hashes[k]
		if own, ok := r.rules.forClients(s, ns); ok {
			s, h = own, Hash(own)
		}
		v.Services = append(v.Services, s)
		v.Hashes[k] = h
		all.Write([]byte(k + "=" + h + ";"))
	}
	if v.Routes, v.routesErr = Routes(r.snap, ns, v.Services); v.routesErr == nil {
		v.RouteHashes = make(map[string]string, len(v.Routes))
		for _, rt := range v.Routes {
			h := Hash(rt)
			v.RouteHashes[rt.Key()] = h
			all.Write([]byte(rt.Key() + "=" + h + ";"))
		}
	}
	v.Digest = fmt.Sprintf("%016x", all.Sum64())
	r.views[ns] = v
	return v
}

func endpoints(snap *catalog.Snapshot, svc *catalog.Service, sp catalog.ServicePort, trustDomain string) []*meshpb.Endpoint {
	if len(svc.Selector) == 0 {
		return listedEndpoints(snap, svc, sp, trustDomain)
	}
	var out []*meshpb.Endpoint
	for _, rp := range snap.Pods {
		p := rp.Pod
		if !rp.Ready || !rp.IP.IsValid() || p.Namespace != svc.Namespace || !catalog.SelectorMatches(svc.Selector, p.Labels) {
			continue
		}
		target, ok := sp.ResolveTargetPort(p)
		if !ok {
			continue
		}
		e := &meshpb.Endpoint{Address: rp.IP.String(), Port: uint32(target),
			Workload: WorkloadName(p), Namespace: p.Namespace, Labels: p.Labels}
		if rp.Sidecar {
			if id, err := identity.ForWorkload(trustDomain, p.Namespace, p.Spec.ServiceAccount); err == nil {
				e.Identity = id.String()
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// listedEndpoints are the ready endpoints a Service without a selector
// lists for sp. An address that is a running pod's is that pod (its
// identity when it is meshed, so it is reached over mTLS); any other is
// reached as it is, in plaintext.
func listedEndpoints(snap *catalog.Snapshot, svc *catalog.Service, sp catalog.ServicePort, trustDomain string) []*meshpb.Endpoint {
	if len(svc.Endpoints) == 0 {
		return nil
	}
	pods := map[netip.Addr]*catalog.RunningPod{}
	for _, rp := range snap.Pods {
		if rp.IP.IsValid() {
			pods[rp.IP] = rp
		}
	}
	var out []*meshpb.Endpoint
	for _, le := range svc.Endpoints {
		port := le.Ports[sp.Name]
		if !le.Ready || !le.IP.IsValid() || port < 1 || port > 65535 {
			continue
		}
		e := &meshpb.Endpoint{Address: le.IP.String(), Port: uint32(port)}
		if rp := pods[le.IP]; rp != nil {
			e.Workload, e.Namespace, e.Labels = WorkloadName(rp.Pod), rp.Pod.Namespace, rp.Pod.Labels
			if rp.Sidecar {
				if id, err := identity.ForWorkload(trustDomain, rp.Pod.Namespace, rp.Pod.Spec.ServiceAccount); err == nil {
					e.Identity = id.String()
				}
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Address < out[j].Address || (out[i].Address == out[j].Address && out[i].Port < out[j].Port)
	})
	return out
}

// ServiceKey names a service in updates: "namespace/name".
func ServiceKey(s *meshpb.Service) string { return s.GetNamespace() + "/" + s.GetName() }

// ForPod is the whole ProxyConfig of pod's sidecar, given what Render made
// of the snapshot, with the routes Routes picks for it (its View's). Its
// version is a hash of the content, so equal configs have equal versions.
func ForPod(pod *catalog.RunningPod, r *Rendered, trustDomain string) (*meshpb.ProxyConfig, error) {
	snap := r.snap
	id, err := PodIdentity(pod.Pod, trustDomain)
	if err != nil {
		return nil, err
	}
	w := policyWorkload(snap, pod.Pod)
	authorization, err := Authorization(snap, w)
	if err != nil {
		return nil, err
	}
	authentication, err := Authentication(snap, w)
	if err != nil {
		return nil, err
	}
	view := r.For(pod.Pod.Namespace)
	if view.routesErr != nil {
		return nil, view.routesErr
	}
	cfg := &meshpb.ProxyConfig{
		Workload:       &meshpb.Workload{Namespace: pod.Pod.Namespace, Name: WorkloadName(pod.Pod), Identity: id.String(), Labels: pod.Pod.Labels},
		Inbound:        InboundPolicy(snap.PeerAuthentications, pod.Pod),
		Services:       view.Services,
		Authorization:  authorization,
		Authentication: authentication,
		Routes:         view.Routes,
	}
	parts := []proto.Message{cfg.Workload, cfg.Inbound}
	if authorization != nil {
		parts = append(parts, authorization)
	}
	if authentication != nil {
		parts = append(parts, authentication)
	}
	cfg.Version = version(view.Digest, parts...) // the digest covers the routes
	return cfg, nil
}

// policyWorkload is pod as security policies select it: its namespace,
// labels and the Services (of its namespace) that select it.
func policyWorkload(snap *catalog.Snapshot, pod *catalog.Pod) authz.Workload {
	w := authz.Workload{Namespace: pod.Namespace, Labels: pod.Labels}
	for _, svc := range snap.Services {
		if svc.Namespace == pod.Namespace && catalog.SelectorMatches(svc.Selector, pod.Labels) {
			w.Services = append(w.Services, svc.Name)
		}
	}
	return w
}

// Authorization is the AuthorizationPolicies that apply to w: its
// namespace's and the root namespaces' whose selector matches its labels,
// or whose targetRefs name a Service selecting it; nil when none does.
func Authorization(snap *catalog.Snapshot, w authz.Workload) (*meshpb.Authorization, error) {
	policies := make([]authz.Policy, len(snap.AuthorizationPolicies))
	for i, p := range snap.AuthorizationPolicies {
		policies[i] = authz.FromCatalog(p)
	}
	selected, err := authz.Select(policies, w, catalog.RootNamespaces)
	if err != nil || len(selected) == 0 {
		return nil, err
	}
	return authz.ToProto(selected), nil
}

// Authentication is the jwtRules of the RequestAuthentications that apply
// to w (selected as AuthorizationPolicies are), merged, with the key sets
// fetched for them; nil when none applies.
func Authentication(snap *catalog.Snapshot, w authz.Workload) (*meshpb.Authentication, error) {
	var rules []authn.JWTRule
	for _, ra := range snap.RequestAuthentications {
		scope := authz.Scope{Namespace: ra.Namespace, Selector: ra.Spec.Selector, TargetRefs: ra.Spec.TargetRefs}
		applies, err := scope.Applies(w, catalog.RootNamespaces)
		if err != nil {
			return nil, fmt.Errorf("RequestAuthentication %s/%s: %w", ra.Namespace, ra.Name, err)
		}
		if applies {
			rules = append(rules, ra.Spec.JWTRules...)
		}
	}
	if len(rules) == 0 {
		return nil, nil
	}
	return authn.ToProto(rules, snap.JWKS), nil
}

// PodIdentity is the SPIFFE ID a pod's sidecar presents.
func PodIdentity(p *catalog.Pod, trustDomain string) (identity.ID, error) {
	return identity.ForWorkload(trustDomain, p.Namespace, p.Spec.ServiceAccount)
}

// version hashes the services' digest and the proxy's own parts.
func version(digest string, parts ...proto.Message) string {
	h := fnv.New64a()
	h.Write([]byte(digest))
	for _, m := range parts {
		h.Write([]byte(Hash(m)))
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

// Hash is m's content hash: equal messages hash alike, over any number of
// runs (updates send what changed by it).
func Hash(m proto.Message) string {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("proxycfg: marshal %T: %v", m, err)) // only for invalid UTF-8, which catalog strings never hold
	}
	h := fnv.New64a()
	h.Write(data)
	return fmt.Sprintf("%016x", h.Sum64())
}

// InboundPolicy resolves the PeerAuthentications that apply to pod: the
// mesh-wide one, the namespace's (no selector), then one selecting the pod,
// whose port modes also win; UNSET inherits, PERMISSIVE when none.
func InboundPolicy(pas []*catalog.PeerAuthentication, pod *catalog.Pod) *meshpb.InboundPolicy {
	// Broadest first: the default, the mesh (root namespaces, Trellis's
	// ahead of Istio's), the pod's namespace, then its workload.
	mode := catalog.MTLSPermissive
	ports := map[uint32]meshpb.MTLSMode{}
	var workload *catalog.PeerAuthentication
	var nsMode catalog.MTLSMode
	meshMode := map[string]catalog.MTLSMode{}
	for _, pa := range pas {
		if pa.Selector == nil && pa.Mode != catalog.MTLSUnset && slices.Contains(catalog.RootNamespaces, pa.Namespace) {
			meshMode[pa.Namespace] = pa.Mode
		}
		switch {
		case pa.Namespace != pod.Namespace:
		case pa.Selector == nil:
			if pa.Mode != catalog.MTLSUnset {
				nsMode = pa.Mode
			}
		case catalog.SelectorMatches(pa.Selector, pod.Labels):
			workload = pa
		}
	}
	for _, root := range slices.Backward(catalog.RootNamespaces) {
		if m, ok := meshMode[root]; ok {
			mode = m
		}
	}
	if nsMode != "" {
		mode = nsMode
	}
	if workload != nil {
		if workload.Mode != catalog.MTLSUnset {
			mode = workload.Mode
		}
		for port, m := range workload.PortModes {
			if m != catalog.MTLSUnset {
				ports[port] = pbMode(m)
			}
		}
	}
	return &meshpb.InboundPolicy{Mode: pbMode(mode), PortModes: ports}
}

func pbMode(m catalog.MTLSMode) meshpb.MTLSMode {
	if m == catalog.MTLSStrict {
		return meshpb.MTLSMode_MTLS_MODE_STRICT
	}
	return meshpb.MTLSMode_MTLS_MODE_PERMISSIVE
}

// WorkloadName is what metrics call a pod's workload: its Deployment, or
// the pod itself.
func WorkloadName(p *catalog.Pod) string {
	if p.Owner != "" {
		return p.Owner
	}
	return p.Name
}

// PortProtocol reads a Service port's protocol from appProtocol, else from
// its name's prefix (http, http2, grpc, tcp), else leaves it to detection.
func PortProtocol(sp catalog.ServicePort) meshpb.Protocol {
	name := sp.AppProtocol
	if name == "" {
		name, _, _ = strings.Cut(sp.Name, "-")
	}
	switch strings.ToLower(name) {
	case "http":
		return meshpb.Protocol_PROTOCOL_HTTP
	case "http2", "h2c", "kubernetes.io/h2c":
		return meshpb.Protocol_PROTOCOL_HTTP2
	case "grpc":
		return meshpb.Protocol_PROTOCOL_GRPC
	case "tcp":
		return meshpb.Protocol_PROTOCOL_TCP
	}
	return meshpb.Protocol_PROTOCOL_UNSPECIFIED
}
