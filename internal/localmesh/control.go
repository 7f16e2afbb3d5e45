package localmesh

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/discovery"
)

// The control plane of a one-host mesh is `trellis control`, a host
// process the runtime supervises like the node agent. It discovers the
// mesh from the registry file the runtime rewrites on every change, and
// serves proxies on the bridge address, port 15012.
const (
	registryFile = "registry.json"
	controlDir   = "control"
	tokenFile    = "token"      // in a pod's files: the sidecar's bootstrap token
	bundleFile   = "bundle.pem" // in a pod's files: the control plane's trust bundle
	controlPort  = 15012
)

func (r *Runtime) controlPlaneAddr() string {
	return netip.AddrPortFrom(r.cfg.PodCIDR.Addr().Next(), controlPort).String()
}

// controlPlaneBundle is the trust bundle the control plane keeps, which
// sidecars trust it by.
func (r *Runtime) controlPlaneBundle() string {
	return filepath.Join(r.cfg.StateDir, controlDir, "ca", "trust-bundle.pem")
}

// prepareControlPlane sets up the control plane's process, restarted
// whenever it exits.
func (r *Runtime) prepareControlPlane() {
	args := []string{r.cfg.Executable, "control",
		"--control-state-dir", filepath.Join(r.cfg.StateDir, controlDir),
		"--registry", filepath.Join(r.cfg.StateDir, registryFile),
		"--grpc-addr", r.controlPlaneAddr(), "--metrics-addr", r.cfg.ControlPlaneMetrics,
		"--trust-domain", r.cfg.TrustDomain, "--svid-ttl", r.cfg.SVIDTTL.String(),
		"--dashboard-addr", r.cfg.Dashboard, "--node-agent-metrics", "http://" + r.cfg.NodeAgentMetrics + "/metrics"}
	if r.cfg.Prometheus != "" {
		args = append(args, "--prometheus", r.cfg.Prometheus)
	}
	if r.cfg.CACert != "" {
		args = append(args, "--ca-cert", r.cfg.CACert, "--ca-key", r.cfg.CAKey)
	}
	r.control = r.hostProcess("control-plane", args, 2*time.Second)
}

// controlPlaneRunner starts and stops the control plane's supervision, for
// Run and for the API (an operator taking the control plane away).
type controlPlaneRunner struct {
	c      *container
	cancel context.CancelFunc // nil while stopped
	done   chan struct{}
}

func (cp *controlPlaneRunner) start() {
	if cp.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp.cancel, cp.done = cancel, make(chan struct{})
	go func() { defer close(cp.done); cp.c.run(ctx) }()
}

func (cp *controlPlaneRunner) stop() {
	if cp.cancel == nil {
		return
	}
	cp.cancel()
	<-cp.done
	cp.cancel = nil
}

// SetControlPlane starts (running) or stops the control plane. Proxies
// keep their config and certificates while it is away and reconnect when
// it is back.
func (r *Runtime) SetControlPlane(running bool) {
	r.cpMu.Lock()
	defer r.cpMu.Unlock()
	if running {
		r.cp.start()
		slog.Info("control plane started")
	} else {
		r.cp.stop()
		slog.Info("control plane stopped")
	}
}

// prepareSidecarStart runs before each start of p's sidecar: it copies the
// control plane's trust bundle into the pod's files (waiting for the control
// plane to write it, when the mesh is just starting) and mints a token.
func (r *Runtime) prepareSidecarStart(ctx context.Context, p *pod) error {
	var bundle []byte
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		var err error
		if bundle, err = os.ReadFile(r.controlPlaneBundle()); err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("control plane trust bundle: %w", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	if err := writeFileShared(filepath.Join(r.podFiles(p.obj), bundleFile), bundle, int(p.sidecarHostID())); err != nil {
		return err
	}
	return r.mintToken(p)
}

// mintToken writes a fresh one-time bootstrap token for the next start of
// p's sidecar and publishes its hash, before the sidecar can use it.
func (r *Runtime) mintToken(p *pod) error {
	buf := make([]byte, 32)
	rand.Read(buf)
	tok := hex.EncodeToString(buf)
	sum := sha256.Sum256([]byte(tok))
	r.mu.Lock()
	defer r.mu.Unlock()
	p.tokenHash = hex.EncodeToString(sum[:])
	if err := r.writeRegistryLocked(); err != nil {
		return err
	}
	return writeFileShared(filepath.Join(r.podFiles(p.obj), tokenFile), []byte(tok), int(p.sidecarHostID()))
}

// writeRegistryLocked publishes the mesh as the control plane sees it,
// when it changed.
func (r *Runtime) writeRegistryLocked() error {
	snap := r.snapshotLocked()
	data, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if string(data) == r.registryLast {
		return nil
	}
	r.registryVersion++
	snap.Version = r.registryVersion
	if err := discovery.WriteFile(filepath.Join(r.cfg.StateDir, registryFile), snap); err != nil {
		return err
	}
	r.registryLast = string(data)
	return nil
}

// snapshotLocked is the mesh as the control plane sees it, version aside:
// services with their VIPs, running pods, policies, DestinationRules, and
// routes and VirtualServices with the time they were applied as their
// creation time (older routes win ties, as in Kubernetes, and the oldest
// of a namespace's VirtualServices for a host wins, as in Istio).
func (r *Runtime) snapshotLocked() *catalog.Snapshot {
	snap := &catalog.Snapshot{Namespaces: r.desired.Namespaces(), PeerAuthentications: r.desired.PeerAuthentications(),
		AuthorizationPolicies: r.desired.AuthorizationPolicies(), RequestAuthentications: r.desired.RequestAuthentications(),
		DestinationRules: r.desired.DestinationRules()}
	for _, svc := range r.desired.Services() {
		s := *svc
		s.ClusterIP = r.vips[svc.Namespace+"/"+svc.Name]
		snap.Services = append(snap.Services, &s)
	}
	for _, p := range r.pods {
		snap.Pods = append(snap.Pods, &catalog.RunningPod{Pod: p.obj, UID: p.uid, IP: p.ip, Ready: p.ready(), Sidecar: p.injected,
			BootstrapTokenSHA256: p.tokenHash})
	}
	sort.Slice(snap.Pods, func(i, j int) bool { return snap.Pods[i].Key() < snap.Pods[j].Key() })
	for _, rt := range r.desired.HTTPRoutes() {
		c := *rt
		c.CreationTimestamp = r.created[catalog.Ref{Kind: catalog.KindHTTPRoute, Namespace: rt.Namespace, Name: rt.Name}]
		snap.HTTPRoutes = append(snap.HTTPRoutes, &c)
	}
	for _, rt := range r.desired.GRPCRoutes() {
		c := *rt
		c.CreationTimestamp = r.created[catalog.Ref{Kind: catalog.KindGRPCRoute, Namespace: rt.Namespace, Name: rt.Name}]
		snap.GRPCRoutes = append(snap.GRPCRoutes, &c)
	}
	for _, vs := range r.desired.VirtualServices() {
		c := *vs
		c.CreationTimestamp = r.created[catalog.Ref{Kind: catalog.KindVirtualService, Namespace: vs.Namespace, Name: vs.Name}]
		snap.VirtualServices = append(snap.VirtualServices, &c)
	}
	return snap
}
