package localmesh

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/nft"
)

// pod is one running pod: its network and its supervised containers.
type pod struct {
	obj        *catalog.Pod
	uid        string // this run of the pod (catalog.RunningPod.UID)
	hash       string // template hash, for pods of a Deployment
	ip         netip.Addr
	idBase     uint32 // host uid and gid of the pod's id 0
	net        podNet
	created    time.Time
	containers []*container
	hostsFile  string // last content written
	injected   bool   // runs a sidecar
	tokenHash  string // guarded by Runtime.mu: SHA-256 of the sidecar's current bootstrap token

	cancel      context.CancelFunc
	wg          sync.WaitGroup // the containers' goroutines
	terminating atomic.Bool
	stopOnce    sync.Once
}

func (p *pod) key() string { return p.obj.Namespace + "/" + p.obj.Name }

func (p *pod) ready() bool {
	if p.terminating.Load() {
		return false
	}
	for _, c := range p.containers {
		if !c.ready() {
			return false
		}
	}
	return true
}

// stop stops the containers and waits for them. Safe to call more than once.
func (p *pod) stop() {
	p.stopOnce.Do(func() {
		p.terminating.Store(true)
		p.cancel()
	})
	p.wg.Wait()
}

// podNetnsName names a pod's network namespace (and its /etc/netns
// directory) "<prefix>-<namespace>.<pod>". Namespace names are DNS labels,
// which never hold a '.', so the first '.' after the prefix ends the
// namespace and two pods never share a name. A name that would be 255 bytes
// or more (a file name's limit) is instead "<prefix>-<start>-<hash>", cut to
// exactly 255 bytes, with a hash of the pair keeping it unique; the manifest's
// name limits keep real pods far below that.
func podNetnsName(prefix, namespace, pod string) string {
	name := prefix + "-" + namespace + "." + pod
	if len(name) < maxFileName {
		return name
	}
	sum := sha256.Sum256([]byte(namespace + "/" + pod))
	hash := fmt.Sprintf("%x", sum[:12])
	return name[:maxFileName-1-len(hash)] + "-" + hash
}

// startPodLocked creates the pod's network and hosts file and starts its
// containers. On error everything created so far is removed again.
func (r *Runtime) startPodLocked(obj *catalog.Pod, hash string) (p *pod, err error) {
	ip, err := r.podIPs.allocate()
	if err != nil {
		return nil, err
	}
	idBase, err := r.idRanges.allocate()
	if err != nil {
		r.podIPs.release(ip)
		return nil, err
	}
	netnsName := podNetnsName(r.cfg.Prefix, obj.Namespace, obj.Name)
	p = &pod{
		obj: obj, uid: rand.Text(), hash: hash, ip: ip, idBase: idBase, created: time.Now(),
		net: podNet{
			Netns:    netnsName,
			HostLink: linkName("tv", netnsName),
			Bridge:   r.bridgeName(),
			Addr:     netip.PrefixFrom(ip, r.cfg.PodCIDR.Bits()),
			Gateway:  r.cfg.PodCIDR.Addr().Next(),
		},
	}
	defer func() {
		if err != nil {
			r.releasePodLocked(p)
			p = nil
		}
	}()
	if err := createPodNetwork(r.ledger, &p.net); err != nil {
		return p, fmt.Errorf("pod %s: %w", p.key(), err)
	}
	r.guardPorts[p.net.HostLink] = nft.GuardPort{Link: p.net.HostLink, MAC: p.net.MAC, Addr: ip}
	if err := r.syncGuardLocked(); err != nil {
		return p, fmt.Errorf("pod %s: %w", p.key(), err)
	}
	if err := r.ledger.Add(Resource{Kind: resHostsDir, Name: netnsName}); err != nil {
		return p, err
	}
	if err := r.writeHostsLocked(p); err != nil {
		return p, fmt.Errorf("pod %s: %w", p.key(), err)
	}
	logs := filepath.Join(r.cfg.StateDir, logDir, obj.Namespace, obj.Name)
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return p, fmt.Errorf("pod %s: log directory: %w", p.key(), err)
	}
	specs := obj.Spec.Containers
	if p.injected = r.injectedLocked(obj); p.injected {
		if err := setUpCapture(netnsName, obj.Annotations, p.sidecarHostID()); err != nil {
			return p, fmt.Errorf("pod %s: %w", p.key(), err)
		}
		sidecar, err := r.prepareSidecarLocked(p)
		if err != nil {
			return p, fmt.Errorf("pod %s: sidecar: %w", p.key(), err)
		}
		specs = append(append([]catalog.Container(nil), specs...), sidecar)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	for _, spec := range specs {
		c := &container{
			spec: spec, podName: p.key(), netns: netnsName, sandbox: r.sandboxLocked(p, spec), podIP: ip.String(),
			env:     r.containerEnvLocked(obj, ip, spec),
			logPath: filepath.Join(logs, spec.Name+".log"),
			policy:  obj.Spec.RestartPolicy, grace: obj.Spec.TerminationGrace,
			backoff: r.cfg.RestartBackoff, maxBackoff: r.cfg.MaxRestartBackoff,
			probeInPod: p.injected && spec.Name != sidecarName,
			cfg:        &r.cfg, changed: r.trigger,
			state: stateWaiting, reason: "ContainerCreating",
		}
		if p.injected && spec.Name == sidecarName {
			c.prestart = func(ctx context.Context) error { return r.prepareSidecarStart(ctx, p) }
		}
		p.containers = append(p.containers, c)
		p.wg.Add(2)
		go func() { defer p.wg.Done(); c.run(ctx) }()
		go func() { defer p.wg.Done(); c.probeLoop(ctx) }()
	}
	slog.Info("pod started", "pod", p.key(), "ip", ip)
	return p, nil
}

// stopPodAsync stops p in the background and then removes its network and
// address; the loop is told when it is gone.
func (r *Runtime) stopPodAsync(p *pod) {
	wasReady := p.ready()
	if p.terminating.Swap(true) {
		return // already stopping
	}
	r.trigger() // its endpoints leave at once
	go func() {
		if wasReady {
			// Keep serving while every proxy learns the endpoint is gone
			// (Kubernetes users add a preStop sleep for the same reason).
			time.Sleep(endpointDrain)
		}
		p.stop()
		r.mu.Lock()
		r.releasePodLocked(p)
		if r.pods[p.key()] == p {
			delete(r.pods, p.key())
		}
		r.mu.Unlock()
		_ = os.RemoveAll(filepath.Join(r.cfg.StateDir, logDir, p.obj.Namespace, p.obj.Name))
		_ = os.RemoveAll(r.podFiles(p.obj))
		slog.Info("pod stopped", "pod", p.key())
		select {
		case r.stopped <- struct{}{}:
		default:
		}
	}()
}

// endpointDrain is how long a ready pod keeps running after it left its
// services' endpoints: the control plane's debounce and push take a few
// hundred milliseconds.
const endpointDrain = time.Second

// releasePodLocked removes the pod's host resources and frees its address.
func (r *Runtime) releasePodLocked(p *pod) {
	for _, res := range []Resource{
		{Kind: resLink, Name: p.net.HostLink},
		{Kind: resNetns, Name: p.net.Netns},
		{Kind: resHostsDir, Name: p.net.Netns},
	} {
		if err := undo(res); err != nil {
			slog.Warn("remove pod resource", "pod", p.key(), "err", err)
			continue
		}
		_ = r.ledger.Remove(res.Kind, res.Name)
	}
	r.podIPs.release(p.ip)
	r.idRanges.release(p.idBase)
	if _, ok := r.guardPorts[p.net.HostLink]; ok {
		delete(r.guardPorts, p.net.HostLink)
		if err := r.syncGuardLocked(); err != nil {
			slog.Warn("remove pod from the guard table", "pod", p.key(), "err", err)
		}
	}
}

// containerEnvLocked builds a container's environment: PATH and HOME, the
// Kubernetes-style variables of the services in the pod's namespace, the
// pod's own POD_* variables, then the container's env, which wins.
func (r *Runtime) containerEnvLocked(obj *catalog.Pod, ip netip.Addr, c catalog.Container) []string {
	env := newEnvList()
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env.set("PATH", podBinDir+":"+path)
	env.set("HOME", "/root")
	env.set("HOSTNAME", obj.Name)
	for _, svc := range r.desired.Services() {
		vip, ok := r.vips[svc.Namespace+"/"+svc.Name]
		if svc.Namespace != obj.Namespace || !ok {
			continue
		}
		for name, value := range serviceEnv(svc, vip) {
			env.set(name, value)
		}
	}
	fields := map[string]string{
		"metadata.name": obj.Name, "metadata.namespace": obj.Namespace,
		"status.podIP": ip.String(), "spec.serviceAccountName": obj.Spec.ServiceAccount,
	}
	env.set("POD_NAME", obj.Name)
	env.set("POD_NAMESPACE", obj.Namespace)
	env.set("POD_IP", ip.String())
	env.set("SERVICE_ACCOUNT", obj.Spec.ServiceAccount)
	for _, e := range c.Env {
		if e.FieldPath != "" {
			env.set(e.Name, fields[e.FieldPath])
			continue
		}
		env.set(e.Name, e.Value)
	}
	return env.list()
}

// envList is an ordered environment where a later set replaces an earlier one.
type envList struct {
	order []string
	vals  map[string]string
}

func newEnvList() *envList { return &envList{vals: map[string]string{}} }

func (e *envList) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.order = append(e.order, k)
	}
	e.vals[k] = v
}

func (e *envList) list() []string {
	out := make([]string, 0, len(e.order))
	for _, k := range e.order {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}
