package localmesh

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/nft"
)

// reconcile makes the host match the desired objects: pods started and
// stopped, service VIPs assigned, hosts files and the service table current.
// Called only from Run's goroutine.
func (r *Runtime) reconcile() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reconcileVIPsLocked()
	want := r.desiredPodsLocked()
	for key, p := range r.pods {
		w, ok := want[key]
		switch {
		case !ok || !reflect.DeepEqual(w.obj.Spec, p.obj.Spec) || w.obj.Owner != p.obj.Owner:
			r.stopPodAsync(p)
		case !reflect.DeepEqual(w.obj, p.obj):
			p.obj = w.obj // labels or annotations: updated in place, as in Kubernetes
		}
	}
	for key, w := range want {
		if _, exists := r.pods[key]; exists {
			continue // running, or still stopping: started on a later pass
		}
		p, err := r.startPodLocked(w.obj, w.hash)
		if err != nil {
			slog.Error("start pod", "pod", key, "err", err)
			continue
		}
		r.pods[key] = p
	}
	for _, p := range r.pods {
		if err := r.writeHostsLocked(p); err != nil {
			slog.Warn("write hosts file", "pod", p.key(), "err", err)
		}
	}
	if r.nftLast == nil { // first pass or periodic resync: repair the guard too
		if err := r.syncGuardLocked(); err != nil {
			slog.Error("apply the bridge guard", "err", err)
		}
	}
	r.syncServiceTableLocked()
	r.updatePolicyInputLocked()
	if err := r.writeRegistryLocked(); err != nil {
		slog.Error("publish the mesh to the control plane", "err", err)
	}
}

type wantPod struct {
	obj  *catalog.Pod
	hash string
}

// desiredPodsLocked expands direct pods and Deployments into the pods that
// should run, by "namespace/name". A Deployment keeps its running pods whose
// template hash is current and names new ones "<deploy>-<hash>-<random>".
func (r *Runtime) desiredPodsLocked() map[string]wantPod {
	want := map[string]wantPod{}
	for _, p := range r.desired.Pods() {
		want[p.Namespace+"/"+p.Name] = wantPod{obj: p}
	}
	for _, d := range r.desired.Deployments() {
		hash := templateHash(d.Template)
		var kept []string
		for key, p := range r.pods {
			if p.obj.Owner == d.Name && p.obj.Namespace == d.Namespace && p.hash == hash && !p.terminating.Load() {
				kept = append(kept, key)
			}
		}
		sort.Strings(kept)
		for i, key := range kept {
			if i < d.Replicas {
				want[key] = wantPod{obj: r.pods[key].obj, hash: hash}
			}
		}
		for i := len(kept); i < d.Replicas; i++ {
			name := d.Name + "-" + hash + "-" + randomSuffix()
			obj := &catalog.Pod{
				Meta: catalog.Meta{Name: name, Namespace: d.Namespace,
					Labels: d.Template.Labels, Annotations: d.Template.Annotations},
				Spec:  d.Template.Spec,
				Owner: d.Name,
			}
			want[d.Namespace+"/"+name] = wantPod{obj: obj, hash: hash}
		}
	}
	return want
}

// templateHash is a short stable hash of a pod template, in Kubernetes'
// pod-template-hash alphabet.
func templateHash(t catalog.PodTemplate) string {
	data, _ := json.Marshal(t)
	h := fnv.New64a()
	h.Write(data)
	return encodeName(h.Sum64(), 10)
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return encodeName(v, 5)
}

// encodeName writes n characters of v in an alphabet without vowels, as
// Kubernetes does, so generated names never spell words.
func encodeName(v uint64, n int) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	out := make([]byte, n)
	for i := range out {
		out[i] = alphabet[v%uint64(len(alphabet))]
		v /= uint64(len(alphabet))
	}
	return string(out)
}

// reconcileVIPsLocked gives every service a VIP and frees those of deleted
// services.
func (r *Runtime) reconcileVIPsLocked() {
	live := map[string]bool{}
	for _, svc := range r.desired.Services() {
		key := svc.Namespace + "/" + svc.Name
		live[key] = true
		if _, ok := r.vips[key]; ok {
			continue
		}
		vip, err := r.vipIPs.allocate()
		if err != nil {
			slog.Error("assign service VIP", "service", key, "err", err)
			continue
		}
		r.vips[key] = vip
	}
	for key, vip := range r.vips {
		if !live[key] {
			r.vipIPs.release(vip)
			delete(r.vips, key)
		}
	}
}

// endpointsLocked returns the ready pods' addresses behind one service port.
func (r *Runtime) endpointsLocked(svc *catalog.Service, sp catalog.ServicePort) []nft.Endpoint {
	var eps []nft.Endpoint
	for _, p := range r.pods {
		if p.obj.Namespace != svc.Namespace || !catalog.SelectorMatches(svc.Selector, p.obj.Labels) || !p.ready() {
			continue
		}
		port, ok := sp.ResolveTargetPort(p.obj)
		if !ok {
			continue
		}
		eps = append(eps, nft.Endpoint{Addr: p.ip, Port: uint16(port)})
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].Addr.Less(eps[j].Addr) })
	return eps
}

// syncServiceTableLocked rewrites the nftables service table when the set of
// service ports or their ready endpoints changed.
func (r *Runtime) syncServiceTableLocked() {
	var ports []nft.ServicePort
	for _, svc := range r.desired.Services() {
		vip, ok := r.vips[svc.Namespace+"/"+svc.Name]
		if !ok {
			continue
		}
		for _, sp := range svc.Ports {
			ports = append(ports, nft.ServicePort{
				Name:      fmt.Sprintf("%s/%s:%d", svc.Namespace, svc.Name, sp.Port),
				VIP:       vip,
				Port:      uint16(sp.Port),
				Protocol:  string(sp.Protocol),
				Endpoints: r.endpointsLocked(svc, sp),
			})
		}
	}
	if r.nftLast != nil && reflect.DeepEqual(ports, r.nftLast) {
		return
	}
	if err := nft.ApplyServices(r.table(), ports); err != nil {
		slog.Error("apply service rules", "err", err)
		return
	}
	if ports == nil {
		ports = []nft.ServicePort{}
	}
	r.nftLast = ports
}

// writeHostsLocked writes the pod's hosts file when its content changed. The
// file is rewritten in place, not replaced, because running processes see
// it through a bind mount of this very inode.
func (r *Runtime) writeHostsLocked(p *pod) error {
	content := r.hostsContentLocked(p)
	if content == p.hostsFile {
		return nil
	}
	dir := filepath.Join(netnsEtcDir, p.net.Netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("hosts file: %w", err)
	}
	if p.hostsFile == "" {
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(podResolvConf), 0o644); err != nil {
			return fmt.Errorf("resolv.conf: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "hosts"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("hosts file: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("hosts file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("hosts file: %w", err)
	}
	p.hostsFile = content
	return nil
}

// podResolvConf makes lookups of names outside the hosts file fail at once
// (a refused query to the pod's own loopback) instead of timing out against
// a host resolver the pod cannot reach; IPv6 lookups of service names, which
// most resolvers try first, would otherwise stall for seconds.
const podResolvConf = `# Written by trellis. Service names resolve through /etc/hosts; the one-host
# mesh runs no DNS server, so other lookups fail fast.
nameserver 127.0.0.1
options attempts:1 timeout:1
`

// hostsContentLocked renders a pod's hosts file: the pod's own name and, for
// every service, "<svc>.<ns>.svc.cluster.local <svc>.<ns>.svc <svc>.<ns>",
// plus the bare "<svc>" for services in the pod's own namespace.
func (r *Runtime) hostsContentLocked(p *pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by trellis for pod %s; rewritten when services change.\n", p.key())
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", p.ip, p.obj.Name)
	for _, svc := range r.desired.Services() {
		vip, ok := r.vips[svc.Namespace+"/"+svc.Name]
		if !ok {
			continue
		}
		fqdn := svc.Name + "." + svc.Namespace
		fmt.Fprintf(&b, "%s\t%s.svc.cluster.local %s.svc %s", vip, fqdn, fqdn, fqdn)
		if svc.Namespace == p.obj.Namespace {
			b.WriteString(" " + svc.Name)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// serviceEnv returns the Kubernetes-style variables for one service:
// NAME_SERVICE_HOST, NAME_SERVICE_PORT (first port) and
// NAME_SERVICE_PORT_<PORTNAME> for each named port.
func serviceEnv(svc *catalog.Service, vip netip.Addr) map[string]string {
	name := envName(svc.Name)
	env := map[string]string{name + "_SERVICE_HOST": vip.String()}
	for i, sp := range svc.Ports {
		if i == 0 {
			env[name+"_SERVICE_PORT"] = strconv.Itoa(int(sp.Port))
		}
		if sp.Name != "" {
			env[name+"_SERVICE_PORT_"+envName(sp.Name)] = strconv.Itoa(int(sp.Port))
		}
	}
	return env
}

func envName(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}
