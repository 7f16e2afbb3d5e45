package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNetworkPolicyTruthTablesOnKubernetes runs the upstream NetworkPolicy
// truth tables on the bed with `trellis check network-policies`: the
// model's namespaces and pods created through the API, every step applied
// there, every pair of pods probed from inside the pods. First without
// Trellis's node agent, where the bed's CNI (the bridge plugin) enforces
// nothing, so a deny table must fail; then with it, where every table of
// every scenario must match. Between the two, the guard of the pods' links:
// a pod sending from a forged address or over IPv6 gets through without the
// agent and not with it.
func TestNetworkPolicyTruthTablesOnKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	trellis := buildTrellis(t, ctx, bed)
	install := func(agent string) {
		t.Helper()
		out, err := trellis("install", "--set", "image.tag=bedtest", "--set", "image.pullPolicy=Never", "--set", "nodeAgent.enabled="+agent).CombinedOutput()
		if err != nil {
			t.Fatalf("trellis install (node agent %s): %v\n%s", agent, err, out)
		}
	}
	install("false")
	step("installed without the node agent")

	if out, err := bed.kubectl(ctx, "create", "namespace", "y"); err != nil {
		t.Fatal(out)
	}
	out, err := trellis("check", "network-policies").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "namespace y already exists") {
		t.Errorf("the check over the user's namespace y: %v\n%s\nwant a refusal naming it", err, out)
	}
	if out, err := bed.kubectl(ctx, "get", "namespace", "x"); err == nil {
		t.Errorf("the refused check created namespace x: %s", out)
	}
	if out, err := bed.kubectl(ctx, "delete", "namespace", "y", "--wait", "--timeout=60s"); err != nil {
		t.Fatal(out)
	}

	out, err = trellis("check", "network-policies", "--run", "^default-deny-ingress$", "--attempts", "2").CombinedOutput()
	t.Logf("without the node agent:\n%s", out)
	if err == nil || !regexp.MustCompile(`(?m)^× default-deny-ingress: \d+/288 cases match`).Match(out) ||
		!strings.Contains(string(out), "no Trellis node agent runs on node") {
		t.Errorf("without the node agent, the deny table passed or the check did not say why: %v", err)
	}
	step("without the node agent, nothing is enforced and the check says so")

	// The guard of the pods' links: without the node agent a pod may send
	// from an address not its own and over IPv6 (around IPv4 policies).
	apply(t, ctx, bed, guardPods)
	if out, err := bed.kubectl(ctx, "-n", "guard", "wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=120s"); err != nil {
		t.Fatal(err, out)
	}
	// Ready comes as the server process starts, a moment before it
	// listens (and before b's IPv6 link-local address leaves DAD).
	if err := waitFor(ctx, "pod b to answer everything without the guard", 20*time.Second, func() error {
		if own, forged, ipv6 := guardChecks(t, ctx); !own || !forged || !ipv6 {
			return fmt.Errorf("own address %v, forged %v, IPv6 %v; want all answered (else this check proves nothing)", own, forged, ipv6)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	install("true")
	// The agent reads the CNI results at once and every half second.
	if err := waitFor(ctx, "the guard to drop a forged source", 15*time.Second, func() error {
		if _, forged, _ := guardChecks(t, ctx); forged {
			return errors.New("still answered")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if own, forged, ipv6 := guardChecks(t, ctx); !own || forged || ipv6 {
		t.Errorf("with the guard: own address answered %v, forged %v, IPv6 %v; want only the own address", own, forged, ipv6)
	}
	metrics := get(t, "http://"+nodeAddr+":15090/metrics")
	for _, reason := range []string{"spoofed", "ipv6"} {
		if !regexp.MustCompile(`trellis_guard_dropped_packets_total\{reason="` + reason + `"\} [1-9]`).MatchString(metrics) {
			t.Errorf("the node agent counts no %s drop:\n%s", reason, grepLines(metrics, "trellis_guard"))
		}
	}
	if out, err := bed.kubectl(ctx, "delete", "namespace", "guard", "--wait", "--timeout=60s"); err != nil {
		t.Fatal(out)
	}
	step("with the node agent, pods send from their own address only, and no IPv6")

	out, err = trellis("check", "network-policies").CombinedOutput()
	t.Logf("trellis check network-policies:\n%s", out)
	if err != nil {
		t.Errorf("the truth tables: %v", err)
	}
	m := regexp.MustCompile(`network policy conformance: (\d+)/(\d+) cases match over (\d+) scenarios`).FindSubmatch(out)
	if m == nil || string(m[1]) != string(m[2]) || string(m[2]) != "14112" || string(m[3]) != "40" {
		t.Errorf("the check's summary %q, want 14112/14112 cases over 40 scenarios", m)
	}
	step("the truth tables")

	for _, ns := range []string{"x", "y", "z"} {
		if out, err := bed.kubectl(ctx, "get", "namespace", ns); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("after the check, kubectl get namespace %s: %s", ns, out)
		}
	}
	if out, err := trellis("uninstall").CombinedOutput(); err != nil {
		t.Errorf("trellis uninstall: %v\n%s", err, out)
	}
	checkNoTrellis(t, ctx, bed)
}

// guardPods is a namespace with two pods serving TCP and UDP 80, which
// the guard check sends from and to.
var guardPods = "apiVersion: v1\nkind: Namespace\nmetadata: {name: guard}\n" + guardPod("a") + guardPod("b")

func guardPod(name string) string {
	return `---
apiVersion: v1
kind: Pod
metadata: {name: ` + name + `, namespace: guard}
spec:
  securityContext: {sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]}
  containers:
  - name: server
    image: trellis.local/trellis-demo:bedtest
    imagePullPolicy: Never
    command: [trellis, example, ports-server, --port, "80"]
    env: [{name: POD_NAME, value: ` + name + `}]
`
}

// podNetns finds a pod's network namespace and address in the CNI
// plugin's result cache (the node's containerd shares this host's
// /var/lib/cni), as the node agent does.
func podNetns(t *testing.T, ns, pod string) (path, addr, mac string) {
	t.Helper()
	files, _ := filepath.Glob("/var/lib/cni/results/*-eth0")
	for _, f := range files {
		var c struct {
			CNIArgs [][2]string `json:"cniArgs"`
			Result  struct {
				Interfaces []struct{ Sandbox, MAC string } `json:"interfaces"`
				IPs        []struct{ Address string }      `json:"ips"`
			} `json:"result"`
		}
		data, err := os.ReadFile(f)
		if err != nil || json.Unmarshal(data, &c) != nil {
			continue
		}
		args := map[string]string{}
		for _, a := range c.CNIArgs {
			args[a[0]] = a[1]
		}
		if args["K8S_POD_NAMESPACE"] != ns || args["K8S_POD_NAME"] != pod || len(c.Result.IPs) == 0 {
			continue
		}
		for _, i := range c.Result.Interfaces {
			if i.Sandbox != "" {
				ip, _, _ := strings.Cut(c.Result.IPs[0].Address, "/")
				return i.Sandbox, ip, i.MAC
			}
		}
	}
	t.Fatalf("no CNI result for pod %s/%s", ns, pod)
	return "", "", ""
}

// inNetns runs fn on a thread in the network namespace at path; the
// thread is dropped afterwards.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// answered sends a datagram from the pod at fromNetns (from local, or
// the pod's own address when nil) to dst's port 80 and says whether the
// ports-server there answered within a second.
func answered(t *testing.T, fromNetns string, local, dst *net.UDPAddr) bool {
	t.Helper()
	got := false
	if err := inNetns(fromNetns, func() error {
		c, err := net.DialUDP("udp", local, dst)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		for range 3 {
			_, _ = c.Write([]byte("probe"))
		}
		n, _ := c.Read(make([]byte, 64))
		got = n > 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// guardChecks sends from pod a to pod b: from a's own address (always
// answered), from a forged address, and over IPv6 link-local (answered
// only without the guard). It returns what got through.
func guardChecks(t *testing.T, ctx context.Context) (own, forged, ipv6 bool) {
	t.Helper()
	aNetns, _, aMAC := podNetns(t, "guard", "a")
	bNetns, bAddr, _ := podNetns(t, "guard", "b")
	// Pod a takes a forged address; b knows where it is without asking
	// (an ARP answer for it would be dropped too, so only the datagram's
	// own source decides).
	const forgedAddr = "10.244.0.250"
	for _, cmd := range [][]string{
		{"--net=" + aNetns, "ip", "addr", "replace", forgedAddr + "/32", "dev", "eth0"},
		{"--net=" + bNetns, "ip", "neigh", "replace", forgedAddr, "lladdr", aMAC, "dev", "eth0", "nud", "permanent"},
	} {
		if out, err := exec.CommandContext(ctx, "nsenter", cmd...).CombinedOutput(); err != nil {
			t.Fatalf("nsenter %s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
	var bLinkLocal net.IP
	if err := inNetns(bNetns, func() error {
		eth, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := eth.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsLinkLocalUnicast() && ipn.IP.To4() == nil {
				bLinkLocal = ipn.IP
			}
		}
		return err
	}); err != nil || bLinkLocal == nil {
		t.Fatalf("pod b's IPv6 link-local address: %v (IPv6 must be on in pods for this check)", err)
	}
	b := &net.UDPAddr{IP: net.ParseIP(bAddr), Port: 80}
	own = answered(t, aNetns, nil, b)
	forged = answered(t, aNetns, &net.UDPAddr{IP: net.ParseIP(forgedAddr)}, b)
	ipv6 = answered(t, aNetns, nil, &net.UDPAddr{IP: bLinkLocal, Zone: "eth0", Port: 80})
	return own, forged, ipv6
}
