// Package localmesh is the one-host runtime behind `trellis up`: it runs the
// pods and services of ordinary Kubernetes manifests on one Linux host, with
// no Kubernetes. Each pod is a network namespace with a veth into a bridge,
// an address from a private range, a hosts file resolving service names to
// service VIPs, and its containers' commands as supervised host processes.
// Service VIPs are balanced across ready pods by nftables DNAT rules (the
// kube-proxy role, rendered by internal/nft).
//
// Everything created on the host is recorded first in a ledger in the state
// directory, so Cleanup can remove it all even after the mesh process was
// killed. The CLI (internal/cli) imports this package; it runs the Runtime
// in `trellis up` and talks to a running one through Client.
package localmesh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/netpolicy"
	"github.com/trellis-mesh/trellis/internal/nft"
)

// Config configures a Runtime. The zero value, with StateDir set, is usable.
type Config struct {
	// StateDir holds the lock, the ledger, the API socket and container logs.
	// Required.
	StateDir string
	// PodCIDR is the range pod addresses come from; its first address is the
	// bridge's. Default 10.200.0.0/16.
	PodCIDR netip.Prefix
	// ServiceCIDR is the range service VIPs come from. Default 10.201.0.0/16.
	ServiceCIDR netip.Prefix
	// Prefix starts the names of everything created on the host: network
	// namespaces, the bridge, the nftables tables. Default "trellis"; at
	// most 10 lowercase letters and digits, so names of two meshes never
	// run into each other.
	Prefix string
	// Executable is the trellis binary used to enter pods; its directory also
	// starts the pods' PATH, so manifests can run `trellis ...` workloads.
	// Default: the running executable.
	Executable string
	// WorkDir is the containers' working directory when they set none.
	// Default: the current directory.
	WorkDir string
	// RestartBackoff is the delay before the first restart of a container;
	// it doubles up to MaxRestartBackoff. Defaults 1 s and 30 s.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// TrustDomain is the mesh's SPIFFE trust domain. Default cluster.local.
	TrustDomain string
	// SVIDTTL is the lifetime of sidecar certificates; they are renewed at
	// half of it. Default 24 h.
	SVIDTTL time.Duration
	// NodeAgentMetrics is where the node agent serves its Prometheus
	// metrics. Default 127.0.0.1:15090.
	NodeAgentMetrics string
	// CACert and CAKey, when set, are an operator's root or intermediate
	// (PEM files) the control plane signs with instead of its own root.
	CACert, CAKey string
	// ControlPlaneMetrics is where the control plane serves its
	// Prometheus metrics. Default 127.0.0.1:15014.
	ControlPlaneMetrics string
	// Dashboard is where the control plane serves the dashboard. Default
	// 127.0.0.1:20001.
	Dashboard string
	// Prometheus, when set, is a Prometheus server's URL the dashboard
	// reads instead of scraping the sidecars itself.
	Prometheus string
	// LogMaxBytes is the size at which a container's log is rotated (one
	// older file kept). Default DefaultLogMaxBytes.
	LogMaxBytes int64
}

// DefaultPodCIDR and DefaultServiceCIDR are the default address ranges.
var (
	DefaultPodCIDR     = netip.MustParsePrefix("10.200.0.0/16")
	DefaultServiceCIDR = netip.MustParsePrefix("10.201.0.0/16")
)

func (c *Config) setDefaults() error {
	if c.StateDir == "" {
		return errors.New("state directory is not set")
	}
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = DefaultPodCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	c.PodCIDR, c.ServiceCIDR = c.PodCIDR.Masked(), c.ServiceCIDR.Masked()
	if c.Prefix == "" {
		c.Prefix = "trellis"
	}
	if len(c.Prefix) > 10 || strings.Trim(c.Prefix, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return fmt.Errorf("name prefix %q: use at most 10 lowercase letters and digits", c.Prefix)
	}
	if c.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		c.Executable = exe
	}
	if c.WorkDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("find working directory: %w", err)
		}
		c.WorkDir = wd
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.SVIDTTL <= 0 {
		c.SVIDTTL = 24 * time.Hour
	}
	if c.NodeAgentMetrics == "" {
		c.NodeAgentMetrics = "127.0.0.1:15090"
	}
	if c.ControlPlaneMetrics == "" {
		c.ControlPlaneMetrics = "127.0.0.1:15014"
	}
	if c.Dashboard == "" {
		c.Dashboard = "127.0.0.1:20001"
	}
	if c.RestartBackoff <= 0 {
		c.RestartBackoff = time.Second
	}
	if c.MaxRestartBackoff < c.RestartBackoff {
		c.MaxRestartBackoff = max(30*time.Second, c.RestartBackoff)
	}
	return nil
}

// Runtime runs one mesh. Create it with New and call Run once.
type Runtime struct {
	cfg    Config
	ledger *Ledger
	podIPs *ipam
	vipIPs *ipam
	// idRanges are the pods' host uid ranges; guarded by mu.
	idRanges idRanges
	kick     chan struct{} // buffered(1): ask the loop to reconcile
	ready    atomic.Bool   // the initial manifests have been reconciled
	stopped  chan struct{} // buffered(1): a pod finished stopping
	quit     chan struct{} // closed by Shutdown
	quitOne  sync.Once

	mu      sync.Mutex
	desired *manifest.Set             // guarded by mu: what the user applied
	created map[catalog.Ref]time.Time // guarded by mu: when each object was applied
	pods    map[string]*pod           // guarded by mu: by "namespace/name"
	vips    map[string]netip.Addr     // guarded by mu: service VIPs by "namespace/name"
	nftLast []nft.ServicePort         // guarded by mu: the rules in the kernel
	// guardPorts are the pods' links the bridge guard knows, by host link
	// name; guarded by mu.
	guardPorts map[string]nft.GuardPort

	policyVersion uint64          // guarded by mu: version of policyInput
	policyInput   netpolicy.Input // guarded by mu: what the node agent enforces
	policyChanged chan struct{}   // guarded by mu: closed when policyVersion grows

	registryVersion uint64 // guarded by mu: of the last registry written
	registryLast    string // guarded by mu: its content, version aside

	agent   *container // the node agent process; set before the API serves
	control *container // the control plane process; set before pods start
	cpMu    sync.Mutex // serialises starting and stopping the control plane
	cp      controlPlaneRunner
}

// New checks cfg and returns a Runtime that has not touched the host yet.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Runtime{
		cfg:     cfg,
		podIPs:  newIPAM(cfg.PodCIDR, 2), // .0 network, .1 bridge
		vipIPs:  newIPAM(cfg.ServiceCIDR, 1),
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}, 1),
		quit:    make(chan struct{}),
		desired: &manifest.Set{},
		created: map[catalog.Ref]time.Time{},
		pods:    map[string]*pod{},
		vips:    map[string]netip.Addr{},

		guardPorts: map[string]nft.GuardPort{},

		policyChanged: make(chan struct{}),
	}, nil
}

func (r *Runtime) bridgeName() string { return r.cfg.Prefix + "0" }
func (r *Runtime) table() nft.Table   { return nft.Table{Name: r.cfg.Prefix} }

// GuardTable and HostTable name the bridge guard's table (family bridge)
// and the host guard's (family ip) of a mesh whose names start with prefix.
func GuardTable(prefix string) string { return prefix + "-guard" }
func HostTable(prefix string) string  { return prefix + "-host" }

// Run takes the state directory's lock, sets up the host, starts the objects
// of initial, serves the API on the state directory's socket and keeps
// everything reconciled until ctx is done. Then it stops every pod and
// removes everything it created, and returns. started, if not nil, is called
// once the initial objects are running.
func (r *Runtime) Run(ctx context.Context, initial *manifest.Set, started func()) (err error) {
	lock, err := Lock(r.cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if r.ledger, err = OpenLedger(r.cfg.StateDir); err != nil {
		return err
	}
	if leftovers := r.ledger.Items(); len(leftovers) > 0 {
		slog.Info("removing leftovers of a mesh that did not stop cleanly", "count", len(leftovers))
		if _, err := undoAll(r.ledger); err != nil {
			return fmt.Errorf("remove leftovers (run `trellis down` to retry): %w", err)
		}
	}
	if err := CheckRanges(r.cfg.PodCIDR, r.cfg.ServiceCIDR); err != nil {
		return err
	}
	_ = os.RemoveAll(filepath.Join(r.cfg.StateDir, logDir))
	defer func() {
		if terr := r.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
	}()
	if err := r.setupHost(); err != nil {
		return err
	}
	if err := r.prepareSandboxRoot(); err != nil {
		return err
	}
	if err := r.prepareNodeAgent(); err != nil {
		return err
	}
	r.prepareControlPlane()
	r.cp.c = r.control
	api, err := r.serveAPI()
	if err != nil {
		return err
	}
	defer api.Close()
	if _, err := r.apply(initial); err != nil {
		return err
	}
	r.SetControlPlane(true)
	defer r.SetControlPlane(false)
	r.reconcile()
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); r.agent.run(agentCtx) }()
	defer func() { stopAgent(); <-agentDone }()
	r.ready.Store(true)
	if started != nil {
		started()
	}
	return r.loop(ctx)
}

func (r *Runtime) setupHost() error {
	if err := setSysctls(r.ledger); err != nil {
		return err
	}
	gw := netip.PrefixFrom(r.cfg.PodCIDR.Addr().Next(), r.cfg.PodCIDR.Bits())
	if err := createBridge(r.ledger, r.bridgeName(), gw); err != nil {
		return err
	}
	if tables, err := nft.Tables(0, r.cfg.Prefix); err != nil {
		return err
	} else if slices.Contains(tables, r.cfg.Prefix) {
		return fmt.Errorf("nftables table ip %s already exists: another mesh runs on this host; stop it with `trellis down --state-dir DIR`", r.cfg.Prefix)
	}
	if err := r.ledger.Add(Resource{Kind: resNFTable, Name: r.cfg.Prefix}); err != nil {
		return err
	}
	if err := nft.ApplyServices(r.table(), nil); err != nil {
		return err
	}
	return r.guardHost()
}

// guardHost sets up the tables that keep pods to their own links and
// addresses and keep everyone but the pods and the host's root out of the
// pods' network (internal/nft, guard.go and host.go).
func (r *Runtime) guardHost() error {
	for _, name := range []string{GuardTable(r.cfg.Prefix), HostTable(r.cfg.Prefix)} {
		if err := r.ledger.Add(Resource{Kind: resNFTable, Name: name}); err != nil {
			return err
		}
	}
	a := r.cfg.PodCIDR.Addr().As4()
	last := binary.BigEndian.Uint32(a[:]) | (1<<(32-r.cfg.PodCIDR.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], last)
	if err := nft.CreateGuard(nft.Table{Name: GuardTable(r.cfg.Prefix)}, nft.Guard{Broadcast: netip.AddrFrom4(a)}, nil); err != nil {
		return err
	}
	return nft.ApplyHostGuard(nft.Table{Name: HostTable(r.cfg.Prefix)}, nft.HostGuard{
		Bridge: r.bridgeName(), Ranges: []netip.Prefix{r.cfg.PodCIDR, r.cfg.ServiceCIDR},
		Gateway: r.cfg.PodCIDR.Addr().Next(), ControlPort: controlPort,
	})
}

// syncGuardLocked gives the bridge guard the links of r.guardPorts.
func (r *Runtime) syncGuardLocked() error {
	ports := make([]nft.GuardPort, 0, len(r.guardPorts))
	for _, p := range r.guardPorts {
		ports = append(ports, p)
	}
	return nft.SetGuardPorts(nft.Table{Name: GuardTable(r.cfg.Prefix)}, ports)
}

// prepareNodeAgent records the node agent's table and sets up its process:
// `trellis node-agent`, on the host, restarted whenever it exits.
func (r *Runtime) prepareNodeAgent() error {
	if err := r.ledger.Add(Resource{Kind: resNFTable, Name: r.policyTable()}); err != nil {
		return err
	}
	// The kernel keeps enforcing while it is down, but come back quickly.
	r.agent = r.hostProcess("node-agent", []string{r.cfg.Executable, "node-agent",
		"--state-dir", r.cfg.StateDir, "--table", r.policyTable(), "--metrics-addr", r.cfg.NodeAgentMetrics,
		"--guard-table", GuardTable(r.cfg.Prefix)}, 500*time.Millisecond)
	return nil
}

// hostProcess is a process of the mesh itself, run on the host (outside
// any pod), logging to <state>/<name>.log and restarted whenever it exits,
// after 100 ms doubling up to maxBackoff.
func (r *Runtime) hostProcess(name string, command []string, maxBackoff time.Duration) *container {
	return &container{
		spec: catalog.Container{Name: name, Command: command}, podName: "(host)", env: os.Environ(),
		logPath: filepath.Join(r.cfg.StateDir, name+".log"),
		policy:  catalog.RestartAlways, grace: 5 * time.Second, cfg: &r.cfg, changed: func() {},
		backoff: 100 * time.Millisecond, maxBackoff: maxBackoff,
		state: stateWaiting,
	}
}

func (r *Runtime) loop(ctx context.Context) error {
	// A periodic pass repairs what events missed (a hand-deleted rule, say).
	resync := time.NewTicker(5 * time.Second)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.quit:
			return nil
		case <-r.kick:
		case <-r.stopped:
		case <-resync.C:
			r.mu.Lock()
			r.nftLast = nil // rewrite the table even if nothing changed
			r.mu.Unlock()
		}
		r.reconcile()
	}
}

// Shutdown makes Run stop the mesh and return, as cancelling its context
// does. Safe to call from any goroutine, more than once.
func (r *Runtime) Shutdown() { r.quitOne.Do(func() { close(r.quit) }) }

// trigger asks the loop to reconcile soon; it never blocks.
func (r *Runtime) trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// teardown stops every pod and removes everything in the ledger.
func (r *Runtime) teardown() error {
	r.mu.Lock()
	pods := make([]*pod, 0, len(r.pods))
	for _, p := range r.pods {
		pods = append(pods, p)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop()
		}()
	}
	wg.Wait()
	_, err := undoAll(r.ledger)
	return err
}

// ApplyResult reports what an apply or delete did, one kubectl-style line
// per object ("deployment/hello created"), plus validation warnings.
type ApplyResult struct {
	Lines    []string `json:"lines"`
	Warnings []string `json:"warnings,omitempty"`
}

// Apply adds or replaces the objects in srcs, kubectl apply style. The whole
// mesh is validated with them before anything changes; on error nothing does.
func (r *Runtime) Apply(srcs []manifest.Source) (ApplyResult, error) {
	in, err := manifest.Parse(srcs)
	if err != nil {
		return ApplyResult{}, err
	}
	res, err := r.apply(in)
	if err == nil {
		r.trigger()
	}
	return res, err
}

func (r *Runtime) apply(in *manifest.Set) (ApplyResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	merged := r.desired.Clone()
	merged.Merge(in)
	warnings, err := manifest.Validate(merged)
	if err != nil {
		return ApplyResult{}, err
	}
	res := ApplyResult{Warnings: warnings}
	for _, ref := range in.Refs() {
		old := r.desired.Get(ref)
		verb := "configured"
		switch {
		case old == nil:
			verb = "created"
			r.created[ref] = time.Now()
		case reflect.DeepEqual(old, in.Get(ref)):
			verb = "unchanged"
		}
		res.Lines = append(res.Lines, objectName(ref)+" "+verb)
	}
	r.desired = merged
	return res, nil
}

// Delete removes the objects named in srcs. Deleting a namespace deletes
// everything in it, as in Kubernetes.
func (r *Runtime) Delete(srcs []manifest.Source) (ApplyResult, error) {
	in, err := manifest.Parse(srcs)
	if err != nil {
		return ApplyResult{}, err
	}
	r.mu.Lock()
	var res ApplyResult
	for _, ref := range in.Refs() {
		if !r.desired.Delete(ref) {
			res.Lines = append(res.Lines, objectName(ref)+" not found")
			continue
		}
		delete(r.created, ref)
		res.Lines = append(res.Lines, objectName(ref)+" deleted")
		if ref.Kind == catalog.KindNamespace {
			for _, inner := range r.desired.Refs() {
				if inner.Namespace == ref.Name {
					r.desired.Delete(inner)
					delete(r.created, inner)
				}
			}
		}
	}
	r.mu.Unlock()
	r.trigger()
	return res, nil
}

// objectName formats a ref the way kubectl reports it: "deployment.apps/x".
func objectName(ref catalog.Ref) string {
	kinds := map[catalog.Kind]string{
		catalog.KindNamespace: "namespace", catalog.KindServiceAccount: "serviceaccount",
		catalog.KindPod: "pod", catalog.KindDeployment: "deployment.apps", catalog.KindService: "service",
		catalog.KindNetworkPolicy:         "networkpolicy.networking.k8s.io",
		catalog.KindPeerAuthentication:    "peerauthentication.security.trellis.io",
		catalog.KindAuthorizationPolicy:   "authorizationpolicy.security.trellis.io",
		catalog.KindRequestAuthentication: "requestauthentication.security.trellis.io",
		catalog.KindHTTPRoute:             "httproute.gateway.networking.k8s.io",
		catalog.KindGRPCRoute:             "grpcroute.gateway.networking.k8s.io",
		catalog.KindDestinationRule:       "destinationrule.networking.istio.io",
		catalog.KindVirtualService:        "virtualservice.networking.istio.io",
	}
	name := ref.Name
	if ref.Namespace != "" {
		name = ref.Namespace + "/" + ref.Name
	}
	return kinds[ref.Kind] + "/" + name
}
