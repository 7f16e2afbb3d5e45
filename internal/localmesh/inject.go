package localmesh

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy"
)

// Injection, as Istio's: pods in namespaces labelled trellis.io/inject=enabled
// (or istio-injection=enabled) get a sidecar container and capture rules,
// unless annotated sidecar.istio.io/inject: "false". The annotations
// traffic.sidecar.istio.io/excludeInboundPorts and excludeOutboundPorts
// leave ports alone.
const (
	injectLabel       = "trellis.io/inject"
	istioInjectLabel  = "istio-injection"
	injectAnnotation  = "sidecar.istio.io/inject"
	excludeInboundAnn = "traffic.sidecar.istio.io/excludeInboundPorts"
	excludeOutbound   = "traffic.sidecar.istio.io/excludeOutboundPorts"
	proxyConfigAnn    = "proxy.istio.io/config"
	sidecarName       = "trellis-proxy"
	podFilesDir       = "pods" // per pod: SVID, bundle and proxy config
)

// injectedLocked reports whether pod p gets a sidecar.
func (r *Runtime) injectedLocked(p *catalog.Pod) bool {
	if v := p.Annotations[injectAnnotation]; v == "false" {
		return false
	}
	ns, _ := r.desired.Get(catalog.Ref{Kind: catalog.KindNamespace, Name: p.Namespace}).(*catalog.Namespace)
	if ns == nil {
		return false
	}
	return ns.Labels[injectLabel] == "enabled" || ns.Labels[istioInjectLabel] == "enabled"
}

func (r *Runtime) podFiles(p *catalog.Pod) string {
	return filepath.Join(r.cfg.StateDir, podFilesDir, p.Namespace, p.Name)
}

// podIdentity is the SPIFFE ID a pod's sidecar presents.
func (r *Runtime) podIdentity(p *catalog.Pod) (identity.ID, error) {
	return identity.ForWorkload(r.authority.TrustDomain(), p.Namespace, p.Spec.ServiceAccount)
}

// prepareSidecarLocked issues the pod's SVID, writes its first config and
// returns the sidecar container to run beside the app.
func (r *Runtime) prepareSidecarLocked(p *pod) (catalog.Container, error) {
	dir := r.podFiles(p.obj)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return catalog.Container{}, err
	}
	id, err := r.podIdentity(p.obj)
	if err != nil {
		return catalog.Container{}, err
	}
	if err := r.issueSVIDLocked(p, id); err != nil {
		return catalog.Container{}, err
	}
	if err := r.writeProxyConfigLocked(p); err != nil {
		return catalog.Container{}, err
	}
	workers, err := sidecarConcurrency(p.obj.Annotations)
	if err != nil {
		return catalog.Container{}, err
	}
	var env []catalog.EnvVar
	if workers > 0 {
		env = append(env, catalog.EnvVar{Name: "GOMAXPROCS", Value: strconv.Itoa(workers)})
	}
	return catalog.Container{
		Name: sidecarName,
		Command: []string{r.cfg.Executable, "proxy", "--config", filepath.Join(dir, "proxy.json"),
			"--cert", filepath.Join(dir, "cert.pem"), "--key", filepath.Join(dir, "key.pem"),
			"--bundle", filepath.Join(dir, "bundle.pem")},
		Env: env,
		Readiness: &catalog.Probe{
			ProbeHandler: catalog.ProbeHandler{HTTPGet: &catalog.HTTPGetAction{Path: "/healthz/ready", Port: 15021}},
			Period:       time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3,
		},
	}, nil
}

// defaultConcurrency is a sidecar's worker threads (GOMAXPROCS) unless the
// pod says otherwise. One, as Linkerd's: in the benchmark a second worker
// doubled the CPU each request cost (Go's scheduler hands goroutines
// between threads) and tripled p99 at 1000 requests a second, for no more
// throughput on two cores (bench/RESULTS.md).
const defaultConcurrency = 1

// sidecarConcurrency reads the worker count from Istio's per-pod proxy
// settings, the annotation proxy.istio.io/config (its other fields are
// ignored): concurrency N, where 0 means one per CPU.
func sidecarConcurrency(annotations map[string]string) (int, error) {
	v, ok := annotations[proxyConfigAnn]
	if !ok {
		return defaultConcurrency, nil
	}
	var cfg struct {
		Concurrency *int `json:"concurrency"`
	}
	if err := yaml.Unmarshal([]byte(v), &cfg); err != nil {
		return 0, fmt.Errorf("annotation %s: %v: write it as YAML, e.g. \"concurrency: 2\"", proxyConfigAnn, err)
	}
	switch {
	case cfg.Concurrency == nil:
		return defaultConcurrency, nil
	case *cfg.Concurrency < 0:
		return 0, fmt.Errorf("annotation %s: concurrency %d: use 0 (one worker per CPU) or more", proxyConfigAnn, *cfg.Concurrency)
	}
	return *cfg.Concurrency, nil
}

// issueSVIDLocked writes a fresh SVID for p and remembers when to renew it:
// at half its lifetime, as Istio does. The sidecar watches the files.
func (r *Runtime) issueSVIDLocked(p *pod, id identity.ID) error {
	svid, err := r.authority.Issue(id, r.cfg.SVIDTTL)
	if err != nil {
		return err
	}
	if err := writeSVID(r.podFiles(p.obj), r.authority, svid); err != nil {
		return err
	}
	leaf := svid.Chain[0]
	p.renewAt = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return nil
}

// renewSVIDsLocked reissues the certificates of sidecars past half-life.
func (r *Runtime) renewSVIDsLocked(now time.Time) {
	for _, p := range r.pods {
		if !p.injected || p.terminating.Load() || now.Before(p.renewAt) {
			continue
		}
		id, err := r.podIdentity(p.obj)
		if err == nil {
			err = r.issueSVIDLocked(p, id)
		}
		if err != nil {
			slog.Error("renew sidecar certificate", "pod", p.key(), "err", err)
		}
	}
}

// setUpCapture writes the pod's capture rules into its namespace,
// with the same code `trellis-proxy redirect` runs.
func setUpCapture(netnsName string, annotations map[string]string) error {
	ns, err := netns.GetFromName(netnsName)
	if err != nil {
		return fmt.Errorf("capture: open netns %s: %w", netnsName, err)
	}
	defer ns.Close()
	return proxy.SetUpCapture(int(ns), proxy.CaptureFlags{
		ExcludeInbound: annotations[excludeInboundAnn], ExcludeOutbound: annotations[excludeOutbound],
	})
}

func writeSVID(dir string, a *ca.Authority, svid *ca.SVID) error {
	var chain, bundle []byte
	for _, c := range svid.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	for _, c := range a.Bundle() {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.Key)
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		"cert.pem": chain, "key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), "bundle.pem": bundle,
	} {
		if err := writeFileAtomic(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeProxyConfigLocked renders the pod's ProxyConfig and writes it when it
// changed; the sidecar watches the file.
func (r *Runtime) writeProxyConfigLocked(p *pod) error {
	cfg, err := r.proxyConfigLocked(p)
	if err != nil {
		return err
	}
	data, err := protojson.MarshalOptions{Multiline: true}.Marshal(cfg)
	if err != nil {
		return err
	}
	if string(data) == p.proxyConfig {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(r.podFiles(p.obj), "proxy.json"), data); err != nil {
		return fmt.Errorf("proxy config of %s: %w", p.key(), err)
	}
	p.proxyConfig = string(data)
	return nil
}

// proxyConfigLocked is what the control plane will compute: every service
// with its ready endpoints and, for endpoints with a sidecar, the identity
// they must present.
func (r *Runtime) proxyConfigLocked(p *pod) (*meshpb.ProxyConfig, error) {
	id, err := r.podIdentity(p.obj)
	if err != nil {
		return nil, err
	}
	byIP := map[netip.Addr]*pod{}
	for _, q := range r.pods {
		byIP[q.ip] = q
	}
	cfg := &meshpb.ProxyConfig{
		Workload: &meshpb.Workload{Namespace: p.obj.Namespace, Name: workloadName(p.obj), Identity: id.String(), Labels: p.obj.Labels},
		Inbound:  r.inboundPolicyLocked(p.obj),
	}
	for _, svc := range r.desired.Services() {
		vip, ok := r.vips[svc.Namespace+"/"+svc.Name]
		if !ok {
			continue
		}
		s := &meshpb.Service{Namespace: svc.Namespace, Name: svc.Name, Vip: vip.String()}
		for _, sp := range svc.Ports {
			if sp.Protocol != catalog.TCP {
				continue // the proxy handles TCP; UDP passes by
			}
			port := &meshpb.ServicePort{Port: uint32(sp.Port), Name: sp.Name, Protocol: portProtocol(sp)}
			for _, ep := range r.endpointsLocked(svc, sp) {
				e := &meshpb.Endpoint{Address: ep.Addr.String(), Port: uint32(ep.Port)}
				if q := byIP[ep.Addr]; q != nil {
					e.Workload, e.Namespace, e.Labels = workloadName(q.obj), q.obj.Namespace, q.obj.Labels
				}
				if q := byIP[ep.Addr]; q != nil && r.injectedLocked(q.obj) {
					qid, err := r.podIdentity(q.obj)
					if err == nil {
						e.Identity = qid.String()
					}
				}
				port.Endpoints = append(port.Endpoints, e)
			}
			s.Ports = append(s.Ports, port)
		}
		cfg.Services = append(cfg.Services, s)
	}
	sort.Slice(cfg.Services, func(i, j int) bool { return cfg.Services[i].Vip < cfg.Services[j].Vip })
	data, _ := protojson.Marshal(cfg)
	h := fnv.New64a()
	h.Write(data)
	cfg.Version = fmt.Sprintf("%016x", h.Sum64())
	return cfg, nil
}

// inboundPolicyLocked resolves the PeerAuthentications that apply to pod.
func (r *Runtime) inboundPolicyLocked(pod *catalog.Pod) *meshpb.InboundPolicy {
	return inboundPolicy(r.desired.PeerAuthentications(), pod)
}

// inboundPolicy resolves the PeerAuthentications that apply to pod: the
// mesh-wide one, the namespace's (no selector), then one selecting the pod,
// whose port modes also win; UNSET inherits, PERMISSIVE when none.
func inboundPolicy(pas []*catalog.PeerAuthentication, pod *catalog.Pod) *meshpb.InboundPolicy {
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

// workloadName is what metrics call a pod's workload: its Deployment, or
// the pod itself.
func workloadName(p *catalog.Pod) string {
	if p.Owner != "" {
		return p.Owner
	}
	return p.Name
}

// portProtocol reads a Service port's protocol from appProtocol, else from
// its name's prefix (http, http2, grpc, tcp), else leaves it to detection.
func portProtocol(sp catalog.ServicePort) meshpb.Protocol {
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
