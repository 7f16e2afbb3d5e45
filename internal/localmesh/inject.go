package localmesh

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy"
	"github.com/trellis-mesh/trellis/internal/telemetry"
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

// prepareSidecarLocked returns the sidecar container to run beside the
// app: `trellis proxy`, which gets its certificate and config from the
// control plane, proving who it is with a one-time token the runtime
// writes before each start (mintToken).
func (r *Runtime) prepareSidecarLocked(p *pod) (catalog.Container, error) {
	// The sidecar (and no one else) reads the pod's files through its
	// group: root's directory, so it cannot plant anything there.
	dir := r.podFiles(p.obj)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return catalog.Container{}, err
	}
	if err := os.Chown(dir, 0, int(p.sidecarHostID())); err != nil {
		return catalog.Container{}, err
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return catalog.Container{}, err
	}
	id, err := identity.ForWorkload(r.cfg.TrustDomain, p.obj.Namespace, p.obj.Spec.ServiceAccount)
	if err != nil {
		return catalog.Container{}, err
	}
	workers, err := sidecarConcurrency(p.obj.Annotations)
	if err != nil {
		return catalog.Container{}, err
	}
	// The sidecar reaches the app at the pod's address (POD_IP), unless
	// the pod asks for loopback.
	env := []catalog.EnvVar{{Name: "POD_IP", FieldPath: "status.podIP"}}
	if strings.EqualFold(p.obj.Annotations[catalog.AnnotationInboundToLocalhost], "true") {
		env = []catalog.EnvVar{{Name: "POD_IP", Value: "127.0.0.1"}}
	}
	if workers > 0 {
		env = append(env, catalog.EnvVar{Name: "GOMAXPROCS", Value: strconv.Itoa(workers)})
	}
	return catalog.Container{
		Name: sidecarName,
		Command: []string{podBinary, "proxy", "--control-plane", r.controlPlaneAddr(),
			"--control-plane-bundle", filepath.Join(podFilesMount, bundleFile), "--identity", id.String(),
			"--pod-namespace", p.obj.Namespace, "--pod-name", p.obj.Name, "--token-file", filepath.Join(podFilesMount, tokenFile),
			// Every request traced: one-host mode is for looking at.
			"--otlp-endpoint", "control-plane", "--trace-sampling", "100", "--trace-service", traceService(p.obj)},
		Env: env,
		Readiness: &catalog.Probe{
			ProbeHandler: catalog.ProbeHandler{HTTPGet: &catalog.HTTPGetAction{Path: "/healthz/ready", Port: 15021}},
			Period:       time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3,
		},
	}, nil
}

// traceService names a pod's spans as Istio does: its canonical service
// and namespace.
func traceService(p *catalog.Pod) string {
	workload := cmp.Or(p.Owner, p.Name)
	return telemetry.PeerFromLabels(workload, p.Namespace, "", p.Labels).CanonicalService + "." + p.Namespace
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

// setUpCapture writes the pod's capture rules into its namespace,
// with the same code `trellis-proxy redirect` runs; proxyUID is the
// sidecar's host uid.
func setUpCapture(netnsName string, annotations map[string]string, proxyUID uint32) error {
	ns, err := netns.GetFromName(netnsName)
	if err != nil {
		return fmt.Errorf("capture: open netns %s: %w", netnsName, err)
	}
	defer ns.Close()
	return proxy.SetUpCapture(int(ns), proxy.CaptureFlags{
		ProxyUID:       proxyUID,
		ExcludeInbound: annotations[excludeInboundAnn], ExcludeOutbound: annotations[excludeOutbound],
		ExcludeOutboundRanges: annotations[catalog.AnnotationExcludeOutboundIPRanges],
	})
}
