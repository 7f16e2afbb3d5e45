package cli_test

// Sidecars in one-host mode: injection, per-request balancing through the
// sidecars over one client connection, and mutual TLS on the wire.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const injectedMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: client, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: server
        command: [trellis, example, hello-server, --listen, ":8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: web}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: client}
spec:
  containers: [{name: shell, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: outside}
spec:
  containers: [{name: shell, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: web, annotations: {sidecar.istio.io/inject: "false"}}
spec:
  containers: [{name: shell, command: [sleep, infinity]}]
`

func TestSidecarsBalanceAndEncrypt(t *testing.T) {
	m := newMesh(t)
	m.up(injectedMesh, "--svid-ttl", "8s") // renewed every 4 s
	waitFor(t, "every pod ready", 60*time.Second, func() bool {
		for _, ns := range []string{"web", "client", "outside"} {
			for _, p := range m.pods(ns) {
				if !p.Ready {
					return false
				}
			}
		}
		return len(m.pods("web")) == 4
	})
	for _, p := range append(m.pods("web"), m.pods("client")...) {
		want := 2
		if p.Name == "opted-out" {
			want = 1
		}
		if len(p.Containers) != want {
			t.Errorf("pod %s/%s has %d containers, want %d", p.Namespace, p.Name, len(p.Containers), want)
		}
	}
	if got := m.must("get", "pods", "-n", "client"); !strings.Contains(got, "2/2") {
		t.Errorf("get pods -n client = %q, want 2/2 ready", got)
	}

	url := "http://hello.web.svc.cluster.local:8080/"
	// The client's sidecar re-reads its config every second: wait until its
	// admin endpoint lists the three endpoints.
	waitFor(t, "the client's sidecar to know the 3 endpoints", 15*time.Second, func() bool {
		out, _, err := m.run("exec", "-n", "client", "client", "--", "curl", "-s", "127.0.0.1:15000/clusters")
		return err == nil && strings.Count(out, `"inFlight"`) == 3
	})
	t.Run("one client connection is balanced per request", func(t *testing.T) {
		// curl reuses one connection for all the URLs of one invocation.
		script := fmt.Sprintf("curl -s -m 10 -w '%%{num_connects}\\n' %s", strings.TrimSpace(strings.Repeat(url+" ", 30)))
		out := m.exec("client", "client", script)
		seen, connects := map[string]bool{}, 0
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(line, "hello from ") {
				seen[strings.TrimPrefix(line, "hello from ")] = true
			} else {
				var n int
				fmt.Sscan(line, &n)
				connects += n
			}
		}
		if connects != 1 || len(seen) < 2 {
			t.Errorf("30 requests on %d connection(s) reached %d replicas (%v); want 1 connection spread over the replicas\n%s", connects, len(seen), seen, out)
		}
	})

	t.Run("a pod calling its own Service may reach itself, through its own inbound", func(t *testing.T) {
		// The sidecar's call to its own pod goes over lo, where capture
		// sends it to the inbound port (it would meet the app's plaintext
		// port with mTLS otherwise): every request succeeds, some
		// answered by the caller itself (each of 30 misses it with
		// probability 2/3: all of them, 1 in 190 000).
		var self string
		for _, p := range m.pods("web") {
			if strings.HasPrefix(p.Name, "hello-") {
				self = p.Name
				break
			}
		}
		got := m.responders("web", self, url, 30)
		if got[self] == 0 || got["FAILED"] > 0 || len(got) > 3 {
			t.Errorf("30 requests from %s to its own Service were answered by %v; want all answered, some by %s itself", self, got, self)
		}
	})

	t.Run("certificates renew at half life without failed requests", func(t *testing.T) {
		serial := func() string {
			out := m.exec("client", "client", "curl -s 127.0.0.1:15000/certs")
			var certs struct{ Serial string }
			if err := json.Unmarshal([]byte(out), &certs); err != nil || certs.Serial == "" {
				t.Fatalf("admin /certs = %q: %v", out, err)
			}
			return certs.Serial
		}
		before := serial()
		// About 9 s of requests span at least two renewals of both sides.
		// curl's own error, if any, lands in the output beside the code.
		out := m.exec("client", "client", fmt.Sprintf("for i in $(seq 90); do curl -sS -m 2 -o /dev/null -w '%%{http_code}\n' %s 2>&1; sleep 0.1; done", url))
		if n := strings.Count(out, "200\n"); n != 90 {
			// The sidecar's own lines (not its access log): restarts,
			// certificate reloads, panics.
			logs, _, _ := m.run("logs", "-n", "client", "client", "-c", "trellis-proxy")
			var own []string
			for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
				if !strings.Contains(line, `"reporter":`) {
					own = append(own, line)
				}
			}
			t.Errorf("%d of 90 requests succeeded across certificate renewals:\n%s\nthe client sidecar's last log lines:\n%s",
				n, out, strings.Join(own[max(0, len(own)-40):], "\n"))
		}
		if after := serial(); after == before {
			t.Errorf("the client sidecar still has certificate %s after 9 s with an 8 s lifetime", before)
		}
	})

	t.Run("STRICT refuses plaintext from outside the mesh, PERMISSIVE accepts it", func(t *testing.T) {
		reach := func(ns string) bool {
			out, _, err := m.run("exec", "-n", ns, "client", "--", "curl", "-s", "-m", "2", url)
			return err == nil && strings.HasPrefix(out, "hello from")
		}
		strict := filepath.Join(t.TempDir(), "strict.yaml")
		// Written for Istio: accepted as the same object.
		doc := "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: web}\nspec:\n  mtls: {mode: STRICT}\n"
		if err := os.WriteFile(strict, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		m.must("apply", "-f", strict)
		waitFor(t, "STRICT to refuse the non-mesh client", 10*time.Second, func() bool { return !reach("outside") })
		if !reach("client") {
			t.Error("STRICT: the meshed client was refused too")
		}
		// Readiness probes reach the app past the sidecar, as Istio's
		// rewritten probes do: STRICT must not make the pods unready.
		time.Sleep(4 * time.Second)
		if eps := m.service("web", "hello").Endpoints; len(eps) != 3 {
			t.Errorf("under STRICT the service has %d ready endpoints, want 3", len(eps))
		}
		m.must("delete", "-f", strict)
		waitFor(t, "PERMISSIVE to accept the non-mesh client again", 10*time.Second, func() bool { return reach("outside") })
	})

	t.Run("a 1 GiB streaming upload keeps the sidecars' memory flat", func(t *testing.T) {
		var pids []int
		for _, p := range append(m.pods("web"), m.pods("client")...) {
			for _, c := range p.Containers {
				if c.Name == "trellis-proxy" && c.PID > 0 {
					pids = append(pids, containerProcess(t, c.PID))
				}
			}
		}
		if len(pids) != 4 {
			t.Fatalf("found %d sidecar processes, want 4 (3 servers, 1 client)", len(pids))
		}
		// One worker each unless proxy.istio.io/config says otherwise.
		for _, pid := range pids {
			env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if !strings.Contains("\x00"+string(env), "\x00GOMAXPROCS=1\x00") {
				t.Errorf("sidecar %d does not run with GOMAXPROCS=1", pid)
			}
		}
		before := map[int]int64{}
		for _, pid := range pids {
			before[pid] = rssKiB(t, pid)
		}
		peak := map[int]int64{}
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				for _, pid := range pids {
					peak[pid] = max(peak[pid], rssKiB(t, pid))
				}
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		start := time.Now()
		out := m.exec("client", "client", "head -c 1073741824 /dev/zero | curl -sS -m 180 -T - "+url+"upload")
		elapsed := time.Since(start)
		close(stop)
		<-sampled
		if !strings.Contains(out, "received 1073741824 bytes") {
			t.Fatalf("upload answer = %q, want 1073741824 bytes received", out)
		}
		for _, pid := range pids {
			grew := peak[pid] - before[pid]
			t.Logf("sidecar pid %d: RSS %d KiB before, peak %d KiB during the upload (+%d KiB)", pid, before[pid], peak[pid], grew)
			if grew > 32<<10 {
				t.Errorf("sidecar pid %d grew by %d KiB while 1 GiB streamed through it, want under 32 MiB", pid, grew)
			}
		}
		t.Logf("1 GiB through two sidecars in %v (%.0f MB/s)", elapsed.Round(time.Millisecond), 1024/elapsed.Seconds())
	})

	t.Run("traffic between sidecars is encrypted", func(t *testing.T) {
		var server string
		for _, p := range m.pods("web") {
			if p.Name != "opted-out" {
				server = p.HostLink
			}
		}
		marker := "PLAINTEXT-MARKER-7b1e"
		count := func(from string) int {
			return sniffFor(t, server, marker, func() {
				m.exec(from, "client", fmt.Sprintf("for i in $(seq 30); do curl -s -m 2 -o /dev/null %s%s; done", url, marker))
			})
		}
		if n := count("client"); n != 0 {
			t.Errorf("the marker crossed the server pod's link in plaintext %d times from the meshed client", n)
		}
		// Control: the same requests from outside the mesh are plaintext
		// (PERMISSIVE), and the capture sees them.
		if n := count("outside"); n == 0 {
			t.Errorf("the capture never saw the marker from the non-mesh client: the test proves nothing")
		}
	})
}

// rssKiB reads a process's resident set size.
func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("sidecar process %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int64
			fmt.Sscan(v, &kib)
			return kib
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// sniffFor captures packets on a host link while run runs and counts those
// whose bytes contain marker.
func sniffFor(t *testing.T, link, marker string, run func()) int {
	t.Helper()
	const ethPAll = 0x0003
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(ethPAll)))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	defer unix.Close(fd)
	ifi, err := netInterfaceIndex(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: ifi}); err != nil {
		t.Fatalf("bind to %s: %v", link, err)
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
	var mu sync.Mutex
	hits, done := 0, make(chan struct{})
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			if strings.Contains(string(buf[:n]), marker) {
				mu.Lock()
				hits++
				mu.Unlock()
			}
		}
	}()
	run()
	time.Sleep(300 * time.Millisecond)
	close(done)
	mu.Lock()
	defer mu.Unlock()
	return hits
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func netInterfaceIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}

// A NetworkPolicy port rule means what its author wrote for meshed traffic
// too: sidecars connect to the app's port (the destination pod redirects to
// its sidecar only after the host checked the policy), and the sidecar's own
// ports are no way around it.
func TestNetworkPolicyPortsWithSidecars(t *testing.T) {
	m := newMesh(t)
	m.up(injectedMesh)
	waitFor(t, "the client's sidecar to know the 3 endpoints", 60*time.Second, func() bool {
		out, _, err := m.run("exec", "-n", "client", "client", "--", "curl", "-s", "127.0.0.1:15000/clusters")
		return err == nil && strings.Count(out, `"inFlight"`) == 3
	})
	var podIP string
	for _, p := range m.pods("web") {
		if p.Name != "opted-out" {
			podIP = p.IP
		}
	}
	url := "http://hello.web.svc.cluster.local:8080/"
	reach := func(ns, target string) bool {
		out, _, err := m.run("exec", "-n", ns, "client", "--", "curl", "-s", "-m", "2", target)
		return err == nil && strings.HasPrefix(out, "hello from")
	}
	policy := func(port int) string {
		path := filepath.Join(t.TempDir(), "policy.yaml")
		doc := fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-client, namespace: web}\n"+
			"spec:\n  podSelector: {matchLabels: {app: hello}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: client}}}]\n"+
			"    ports: [{port: %d}]\n", port)
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	m.must("apply", "-f", policy(8080))
	waitFor(t, "the policy to block the non-mesh client", 10*time.Second, func() bool { return !reach("outside", url) })
	if !reach("client", url) {
		t.Error("a rule allowing the app port from the client namespace blocked the meshed client")
	}
	for _, port := range []string{"15006", "15001"} {
		if reach("client", "http://"+podIP+":"+port+"/") {
			t.Errorf("the meshed client reached the app through the sidecar's port %s", port)
		}
	}

	m.must("apply", "-f", policy(9090))
	waitFor(t, "a rule on another port to block the meshed client", 10*time.Second, func() bool { return !reach("client", url) })
}
