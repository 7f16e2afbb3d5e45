package cli_test

// The Kubernetes NetworkPolicy conformance truth tables (package
// truthtable: the upstream netpol e2e suite's model and scenarios) on real
// network namespaces in one-host mode: for every scenario, every pair of
// pods is probed on every port and protocol and compared with the expected
// reachability. `trellis check network-policies` runs the same tables on a
// cluster.

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/netpolicy/truthtable"
	"github.com/trellis-mesh/trellis/internal/nft"
)

// netpolModel writes the namespaces and pods of the model. Namespace names
// are quoted: YAML 1.1 reads a bare y as true.
func netpolModel() string {
	var b strings.Builder
	for _, ns := range truthtable.Namespaces {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %q, labels: {ns: %q}}\n---\n", ns, ns)
	}
	for _, ns := range truthtable.Namespaces {
		for _, pod := range truthtable.Pods {
			fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %q, labels: {pod: %s}}
spec:
  containers:
  - name: server
    command: [trellis, example, ports-server, --port, "80,81"]
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-81-tcp, containerPort: 81}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
---
`, pod, ns, pod)
		}
	}
	return b.String()
}

// netpolMesh is the running model.
type netpolMesh struct {
	*mesh
	ips map[string]string // "x/a" -> pod IP
	dir string
}

func (n *netpolMesh) apply(yaml string) {
	n.t.Helper()
	path := filepath.Join(n.dir, fmt.Sprintf("p%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		n.t.Fatal(err)
	}
	n.must("apply", "-f", path)
}

func (n *netpolMesh) deleteAllPolicies() {
	n.t.Helper()
	var del strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(n.must("get", "netpol", "-A", "-o", "wide")), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 1 {
			fmt.Fprintf(&del, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: %q}\nspec: {podSelector: {}}\n---\n", f[1], f[0])
		}
	}
	if del.Len() > 0 {
		path := filepath.Join(n.dir, "delete.yaml")
		if err := os.WriteFile(path, []byte(del.String()), 0o600); err != nil {
			n.t.Fatal(err)
		}
		n.must("delete", "-f", path)
	}
	waitFor(n.t, "the policy table to hold no policy", 10*time.Second, func() bool {
		counts, err := nft.RuleCounts(nft.Table{Name: "trellis-netpol"})
		return err == nil && len(counts) == 2
	})
}

// reachability probes every ordered pair of distinct pods on every port and
// protocol, all sources in parallel.
func (n *netpolMesh) reachability() map[string]bool {
	n.t.Helper()
	out := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, from := range truthtable.Keys() {
		targets, cases := truthtable.Targets(from, n.ips)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns, pod, _ := strings.Cut(from, "/")
			stdout, stderr, err := n.run(append([]string{"exec", "-n", ns, pod, "--", "trellis", "example", "probe", "--timeout", "1s"}, targets...)...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				n.t.Errorf("probe from %s: %v: %s", from, err, stderr)
				return
			}
			for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
				target, result, _ := strings.Cut(line, " ")
				out[cases[target]] = result == "ok"
			}
		}()
	}
	wg.Wait()
	return out
}

// check probes until the matrix matches want (enforcement is asynchronous)
// or the attempts run out, and returns matched and total cases.
func (n *netpolMesh) check(name string, want truthtable.Expectation) (matched, total int) {
	n.t.Helper()
	var mismatches []string
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Second)
		}
		matched, total, mismatches = truthtable.Compare(n.reachability(), want)
		if len(mismatches) == 0 {
			return matched, total
		}
	}
	n.t.Errorf("%s: %d/%d cases match; mismatches:\n%s", name, matched, total, truthtable.Summarize(mismatches))
	return matched, total
}

// label writes the manifest that gives a pod or a namespace of the model
// new labels: the model with the pod relabelled, or the namespace.
func label(l *truthtable.Label) string {
	keys := slices.Sorted(maps.Keys(l.Labels))
	var pairs []string
	for _, k := range keys {
		pairs = append(pairs, fmt.Sprintf("%s: %q", k, l.Labels[k]))
	}
	labels := "{" + strings.Join(pairs, ", ") + "}"
	if l.Pod == "" {
		return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: %q, labels: %s}\n", l.Namespace, labels)
	}
	old := fmt.Sprintf("metadata: {name: %s, namespace: %q, labels: {pod: %s}}", l.Pod, l.Namespace, l.Pod)
	return strings.Replace(netpolModel(), old, fmt.Sprintf("metadata: {name: %s, namespace: %q, labels: %s}", l.Pod, l.Namespace, labels), 1)
}

func TestNetworkPolicyConformance(t *testing.T) {
	m := newMesh(t)
	m.up(netpolModel())
	n := &netpolMesh{mesh: m, ips: map[string]string{}, dir: t.TempDir()}
	waitFor(t, "9 ready pods", time.Minute, func() bool {
		ready := 0
		for _, ns := range truthtable.Namespaces {
			for _, p := range m.pods(ns) {
				if p.Ready {
					ready++
					n.ips[ns+"/"+p.Name] = p.IP
				}
			}
		}
		return ready == 9
	})
	t.Run("no policy: everything reaches everything", func(t *testing.T) { n.t = t; n.check("no policy", truthtable.AllowAll) })

	matched, total := 0, 0
	for _, sc := range truthtable.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			n.t = t
			for i, step := range sc.Steps {
				if step.DeleteAll {
					n.deleteAllPolicies()
				}
				if step.Policies != nil {
					n.apply(step.Policies(n.ips))
				}
				if step.Label != nil {
					n.apply(label(step.Label))
				}
				mt, tt := n.check(fmt.Sprintf("%s, step %d", sc.Name, i+1), step.Want)
				matched, total = matched+mt, total+tt
			}
			n.deleteAllPolicies()
		})
	}
	n.t = t
	fmt.Printf("network policy conformance: %d/%d cases match\n", matched, total)
	if matched != total {
		t.Errorf("%d/%d cases match", matched, total)
	}

	t.Run("denials are counted per policy", func(t *testing.T) {
		n.t = t
		n.apply(truthtable.Policy("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]"))
		n.check("deny-ingress for counting", func(f, t string, _ truthtable.Port) bool { return truthtable.NsOf(t) != "x" })
		out := n.must("get", "netpol", "-n", "x")
		fields := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])
		if len(fields) < 3 || fields[0] != "deny-ingress" || fields[2] == "0" {
			t.Errorf("get netpol = %q, want deny-ingress with denied packets", out)
		}
		n.deleteAllPolicies()
	})

	t.Run("a hand-flushed chain comes back within 2s", func(t *testing.T) {
		n.t = t
		n.apply(truthtable.Policy("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]"))
		table := nft.Table{Name: "trellis-netpol"}
		var want map[string]int
		waitFor(t, "the policy to be applied", 5*time.Second, func() bool {
			var err error
			want, err = nft.RuleCounts(table)
			return err == nil && len(want) == 3
		})
		if err := nft.FlushChain(table, "ingress"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, "the agent to restore the chain", 2*time.Second, func() bool {
			got, err := nft.RuleCounts(table)
			return err == nil && got["ingress"] == want["ingress"]
		})
		fmt.Printf("hand-flushed policy chain restored in %s\n", time.Since(start).Round(time.Millisecond))
		n.check("deny-ingress after repair", func(f, t string, _ truthtable.Port) bool { return truthtable.NsOf(t) != "x" })
		n.deleteAllPolicies()
	})

	t.Run("a bad policy is refused and nothing is half-applied", func(t *testing.T) {
		n.t = t
		good := truthtable.Policy("x", "good", "  podSelector: {}\n  policyTypes: [Ingress]")
		for _, tc := range []struct{ spec, want string }{
			{"  podSelector: {}\n  ingress: [{ports: [{port: serve-99-tcp}]}]", `port name "serve-99-tcp" matches no TCP container port of any pod`},
			{"  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", `ipBlock.cidr "10.0.0.0/33" is not a valid CIDR`},
			{"  podSelector: {matchExpressions: [{key: pod, operator: Is, values: [a]}]}", `operator "Is": use In, NotIn, Exists or DoesNotExist`},
		} {
			path := filepath.Join(n.dir, "bad.yaml")
			if err := os.WriteFile(path, []byte(good+truthtable.Policy("x", "bad", tc.spec)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, err := n.run("apply", "-f", path)
			if err == nil || !strings.Contains(errOut, tc.want) {
				t.Errorf("apply bad policy: err %v, stderr %q; want %q", err, errOut, tc.want)
			}
			if out := n.must("get", "netpol", "-A"); strings.Contains(out, "good") {
				t.Errorf("after a refused apply, policies = %q; want none", out)
			}
		}
	})

	t.Run("enforcement latency", func(t *testing.T) { n.t = t; measureEnforcement(n) })
	t.Run("agent restarts open no gap", func(t *testing.T) { n.t = t; restartAgent(n) })
}

// measureEnforcement times from running `trellis apply` (a new process
// reading a file, as a user would) to the kernel holding the policy's chain,
// over 20 applies and deletes.
func measureEnforcement(n *netpolMesh) {
	t := n.t
	var lat []time.Duration
	table := nft.Table{Name: "trellis-netpol"}
	hasPolicy := func() bool {
		counts, err := nft.RuleCounts(table)
		return err == nil && len(counts) > 2
	}
	for i := 0; i < 20; i++ {
		start := time.Now()
		n.apply(truthtable.Policy("x", "latency", fmt.Sprintf("  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: %d}]}]", 1000+i)))
		for !hasPolicy() {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("policy not enforced after 5s")
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
		n.deleteAllPolicies()
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	fmt.Printf("policy change to enforcement (from running trellis apply): p50 %s, p99 %s over %d changes\n",
		p50.Round(time.Millisecond/10), p99.Round(time.Millisecond/10), len(lat))
	if p99 > 2*time.Second {
		t.Errorf("p99 enforcement latency %s, want at most 2s", p99)
	}
}

// restartAgent kills the node agent 20 times while a denied pair and an
// allowed pair probe continuously: nothing may leak, nothing may fail.
func restartAgent(n *netpolMesh) {
	t := n.t
	n.apply(truthtable.Policy("x", "deny-from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"))
	n.check("deny-from-y", func(f, to string, _ truthtable.Port) bool { return to != "x/a" || truthtable.NsOf(f) == "z" })
	type result struct{ out, errOut string }
	probe := func(from string, done chan<- result) {
		ns, pod, _ := strings.Cut(from, "/")
		out, errOut, _ := n.run("exec", "-n", ns, pod, "--", "trellis", "example", "probe", "--for", "25s",
			"--timeout", "300ms", "--interval", "10ms", "tcp/"+n.ips["x/a"]+":80")
		done <- result{out, errOut}
	}
	denied, allowed := make(chan result, 1), make(chan result, 1)
	go probe("y/b", denied)
	go probe("z/b", allowed)
	client := localmesh.NewClient(n.state)
	start := time.Now()
	for i := 0; i < 20; i++ {
		st, err := client.Status(t.Context())
		if err != nil || st.AgentPID == 0 {
			t.Fatalf("status: %v (agent pid %d)", err, st.AgentPID)
		}
		if err := syscall.Kill(st.AgentPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the node agent to restart", 10*time.Second, func() bool {
			st2, err := client.Status(t.Context())
			return err == nil && st2.AgentPID != 0 && st2.AgentPID != st.AgentPID
		})
		time.Sleep(200 * time.Millisecond) // let it apply on start
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("20 restarts took %s: longer than the probes watched", d)
	}
	d, a := <-denied, <-allowed
	fmt.Printf("20 node-agent restarts: denied pair %s; allowed pair %s\n", strings.TrimSpace(d.out), strings.TrimSpace(a.out))
	if !strings.Contains(d.out, " ok=0 ") {
		t.Errorf("denied pair leaked during agent restarts: %q %s", d.out, d.errOut)
	}
	if !strings.Contains(a.out, " fail=0") {
		t.Errorf("allowed pair failed during agent restarts: %q %s", a.out, a.errOut)
	}
	n.deleteAllPolicies()
}

// The reference policy, from examples/: only namespaces labelled for
// injection reach the database; the other client times out on both ports.
func TestMeshMembersOnlyExample(t *testing.T) {
	m := newMesh(t)
	m.must("up", "-d", "-f", "../../examples/mesh-members-only/mesh.yaml")
	waitFor(t, "the database pods to be ready", 30*time.Second, func() bool {
		return len(m.service("db", "graph-alpha").Endpoints) == 4 // 2 pods x 2 ports
	})
	probe := func(ns string) string {
		return m.must("exec", "-n", ns, "client", "--", "trellis", "example", "probe", "--timeout", "1s",
			"tcp/graph-alpha.db.svc.cluster.local:8080", "tcp/graph-alpha.db.svc.cluster.local:9080")
	}
	// The meshed client's sidecar learns the endpoints from its config file
	// (re-read every second), so allow it a moment.
	for _, ns := range []string{"client-allow", "client-deny"} {
		waitFor(t, "before the policy, "+ns+" to reach both ports", 10*time.Second, func() bool {
			return strings.Count(probe(ns), " ok") == 2
		})
	}
	m.must("apply", "-f", "../../examples/mesh-members-only/policy.yaml")
	waitFor(t, "the deny client to be blocked", 5*time.Second, func() bool {
		return strings.Count(probe("client-deny"), " fail") == 2
	})
	if out := probe("client-allow"); strings.Count(out, " ok") != 2 {
		t.Errorf("with the policy, client-allow reaches %q; want both ports", out)
	}

	// Every other address the database pods have, TCP and UDP: the VIP
	// and the pod addresses, and no IPv6 address at all (so none to reach).
	var direct []string
	for _, p := range m.pods("db") {
		for _, port := range []string{"8080", "9080"} {
			direct = append(direct, "tcp/"+p.IP+":"+port, "udp/"+p.IP+":"+port)
		}
		if v6 := m.must("exec", "-n", "db", p.Name, "-c", "alpha", "--", "cat", "/proc/net/if_inet6"); strings.Count(v6, "\n") != 1 || !strings.HasSuffix(v6, " lo\n") {
			t.Errorf("pod %s has IPv6 addresses beyond lo's ::1:\n%s", p.Name, v6)
		}
	}
	probeAll := func(ns string, targets []string) string {
		return m.must(append([]string{"exec", "-n", ns, "client", "--", "trellis", "example", "probe", "--timeout", "1s"}, targets...)...)
	}
	if out := probeAll("client-deny", direct); strings.Contains(out, " ok") {
		t.Errorf("with the policy, client-deny reaches pod addresses:\n%s", out)
	}
	if out := probeAll("client-allow", direct); strings.Contains(out, " fail") {
		t.Errorf("with the policy, client-allow fails on pod addresses:\n%s", out)
	}
	// Multicast to all hosts of the link: the guard drops it whatever the
	// policies say (pods have no broadcast domain) and counts it.
	guard := nft.Table{Name: localmesh.GuardTable("trellis")}
	before, err := nft.GuardCounts(guard)
	if err != nil {
		t.Fatal(err)
	}
	probeAll("client-deny", []string{"udp/224.0.0.1:8080", "udp/224.0.0.1:9080"})
	after, err := nft.GuardCounts(guard)
	if err != nil {
		t.Fatal(err)
	}
	if after[nft.GuardBroadcast] < before[nft.GuardBroadcast]+2 {
		t.Errorf("multicast from client-deny: the guard's broadcast counter went %d -> %d, want +2", before[nft.GuardBroadcast], after[nft.GuardBroadcast])
	}
	// And the node agent shows the count.
	resp, err := http.Get("http://127.0.0.1:15090/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	const series = `trellis_guard_dropped_packets_total{reason="broadcast"} `
	_, value, _ := strings.Cut(string(metrics), series)
	value, _, _ = strings.Cut(value, "\n")
	if n, err := strconv.ParseUint(value, 10, 64); err != nil || n < after[nft.GuardBroadcast] {
		t.Errorf("node agent metrics: %s%q, want at least %d", series, value, after[nft.GuardBroadcast])
	}
}

// With STRICT mutual TLS in the database's namespace and no policy,
// nothing reaches the app unencrypted: the client outside the mesh fails on
// the VIP and every pod address; the meshed client still reaches the
// service. (A meshed client dialling a pod address directly is passed
// through unencrypted, as Istio's PassthroughCluster does, and STRICT
// refuses it too.)
func TestStrictWithoutPolicy(t *testing.T) {
	m := newMesh(t)
	strict := "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: db}\nspec: {mtls: {mode: STRICT}}\n"
	mesh, err := os.ReadFile("../../examples/mesh-members-only/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m.up(string(mesh) + strict)
	waitFor(t, "the database pods to be ready", 30*time.Second, func() bool {
		return len(m.service("db", "graph-alpha").Endpoints) == 4
	})
	vip := []string{"tcp/graph-alpha.db.svc.cluster.local:8080", "tcp/graph-alpha.db.svc.cluster.local:9080"}
	all := vip
	for _, p := range m.pods("db") {
		all = append(all, "tcp/"+p.IP+":8080", "tcp/"+p.IP+":9080")
	}
	probe := func(ns string, targets []string) string {
		return m.must(append([]string{"exec", "-n", ns, "client", "--", "trellis", "example", "probe", "--timeout", "1s"}, targets...)...)
	}
	waitFor(t, "the meshed client to reach the service", 10*time.Second, func() bool {
		return !strings.Contains(probe("client-allow", vip), " fail")
	})
	if out := probe("client-deny", all); strings.Contains(out, " ok") {
		t.Errorf("STRICT: the client outside the mesh reaches the app in plaintext:\n%s", out)
	}
}
