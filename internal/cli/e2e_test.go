package cli_test

// End-to-end tests of the one-host runtime, driven through the real trellis
// binary as a user would: real network namespaces, veth links, nftables
// rules and processes. They need root and skip without it.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/nft"
)

var trellisBin string // built once by TestMain

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("SKIP internal/cli end-to-end tests: they create network namespaces, veth links and nftables rules and need root (run the suite with sudo)")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "trellis-e2e-bin")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the non-root test runs it too
	}
	if err != nil {
		fmt.Println("temp dir:", err)
		os.Exit(1)
	}
	if preexisting, err = meshArtifacts(); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if len(preexisting) > 0 {
		fmt.Printf("the host already holds %v; the leftover checks ignore them\n", preexisting)
	}
	trellisBin = filepath.Join(dir, "trellis")
	build := exec.Command("go", "build", "-o", trellisBin, "github.com/trellis-mesh/trellis/cmd/trellis")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("build trellis:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sharedDir is a directory on the host that pods can read when it is their
// working directory (t.TempDir's are root's alone).
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "trellis-e2e-shared")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth links and nftables rules")
	}
}

// mesh drives one trellis state directory.
type mesh struct {
	t     *testing.T
	state string
}

func newMesh(t *testing.T) *mesh {
	needRoot(t)
	m := &mesh{t: t, state: t.TempDir()}
	t.Cleanup(func() {
		// Whatever a test did, leave the host clean.
		_, _, _ = m.run("down")
	})
	return m
}

// run runs trellis with args against the mesh's state directory.
func (m *mesh) run(args ...string) (stdout, stderr string, err error) {
	return m.runWithin(2*time.Minute, args...)
}

// runWithin is run with a time limit of its own.
func (m *mesh) runWithin(limit time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, trellisBin, append([]string{"--state-dir", m.state}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func (m *mesh) must(args ...string) string {
	m.t.Helper()
	out, errOut, err := m.run(args...)
	if err != nil {
		m.t.Fatalf("trellis %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// up starts the mesh in the background from manifest text.
func (m *mesh) up(yaml string, extra ...string) {
	m.t.Helper()
	path := filepath.Join(m.t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		m.t.Fatal(err)
	}
	m.must(append([]string{"up", "-d", "-f", path}, extra...)...)
}

func (m *mesh) pods(ns string) []localmesh.PodStatus {
	m.t.Helper()
	var pods []localmesh.PodStatus
	if err := json.Unmarshal([]byte(m.must("get", "pods", "-n", ns, "-o", "json")), &pods); err != nil {
		m.t.Fatal(err)
	}
	return pods
}

func (m *mesh) service(ns, name string) localmesh.ServiceStatus {
	m.t.Helper()
	var svcs []localmesh.ServiceStatus
	if err := json.Unmarshal([]byte(m.must("get", "svc", name, "-n", ns, "-o", "json")), &svcs); err != nil || len(svcs) != 1 {
		m.t.Fatalf("get svc %s/%s: %v (%d found)", ns, name, err, len(svcs))
	}
	return svcs[0]
}

// exec runs a shell script inside a pod.
func (m *mesh) exec(ns, pod, script string) string {
	m.t.Helper()
	return m.must("exec", "-n", ns, pod, "--", "sh", "-c", script)
}

// responders counts which pods answered n requests to url from a pod.
func (m *mesh) responders(ns, pod, url string, n int) map[string]int {
	m.t.Helper()
	out := m.exec(ns, pod, fmt.Sprintf("for i in $(seq %d); do curl -s -m 2 %s || echo FAILED; done", n, url))
	got := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		got[strings.TrimPrefix(line, "hello from ")]++
	}
	return got
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leftovers lists network namespaces, links, hosts directories and nftables
// tables of ours that exist on the host.
func leftovers(t *testing.T) []string {
	t.Helper()
	all, err := meshArtifacts()
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(all, func(s string) bool { return slices.Contains(preexisting, s) })
}

// preexisting is what the host held before these tests ran (another
// tool's namespace, a run killed before its cleanup): not theirs to judge.
var preexisting []string

// meshArtifacts lists what a one-host mesh makes on the host: network
// namespaces, links and nftables tables.
func meshArtifacts() ([]string, error) {
	var out []string
	for _, dir := range []string{"/var/run/netns", "/etc/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "trellis-") {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if l.Name() == "trellis0" || strings.HasPrefix(l.Name(), "tv") || strings.HasPrefix(l.Name(), "tp") {
			out = append(out, "link "+l.Name())
		}
	}
	tables, err := nft.Tables(0, "trellis")
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, tb := range tables {
		out = append(out, "nftables table "+tb)
	}
	return out, nil
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

const roundTripMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Namespace
metadata: {name: client}
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
        workingDir: %[1]s
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          exec: {command: [sh, -c, "test ! -e %[1]s/$POD_NAME"]}
          periodSeconds: 1
          failureThreshold: 1
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
  containers:
  - {name: shell, command: [sleep, infinity]}
`

func TestUpExecDownRoundTrip(t *testing.T) {
	m := newMesh(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed inside pods; install it (the test command does: apt-get install curl)")
	}
	forwardBefore := readSysctl(t, "/proc/sys/net/ipv4/ip_forward")
	// Markers the readiness probes look for: in the pods' working
	// directory, the one host directory their view shows.
	unready := sharedDir(t)
	m.up(fmt.Sprintf(roundTripMesh, unready))

	var replicas []localmesh.PodStatus
	waitFor(t, "3 ready replicas", 30*time.Second, func() bool {
		replicas = m.pods("web")
		return len(replicas) == 3 && !slices.ContainsFunc(replicas, func(p localmesh.PodStatus) bool { return !p.Ready })
	})
	names := map[string]bool{}
	for _, p := range replicas {
		names[p.Name] = true
	}

	t.Run("names resolve to the service VIP", func(t *testing.T) {
		vip := m.service("web", "hello").ClusterIP
		for _, host := range []string{"hello.web.svc.cluster.local", "hello.web.svc", "hello.web"} {
			if got := strings.Fields(m.exec("client", "client", "getent hosts "+host)); len(got) == 0 || got[0] != vip {
				t.Errorf("in client: getent hosts %s = %v, want %s", host, got, vip)
			}
		}
		if got := strings.Fields(m.exec("web", replicas[0].Name, "getent hosts hello")); len(got) == 0 || got[0] != vip {
			t.Errorf("in web: getent hosts hello = %v, want %s", got, vip)
		}
		env := m.exec("client", "client", "env")
		for _, want := range []string{"POD_NAME=client", "POD_NAMESPACE=client", "SERVICE_ACCOUNT=default"} {
			if !strings.Contains(env, want+"\n") {
				t.Errorf("client env lacks %s", want)
			}
		}
		webEnv := m.exec("web", replicas[0].Name, "env")
		for _, want := range []string{"HELLO_SERVICE_HOST=" + vip, "HELLO_SERVICE_PORT=8080", "POD_IP=" + replicas[0].IP} {
			if !strings.Contains(webEnv, want+"\n") {
				t.Errorf("web pod env lacks %s", want)
			}
		}
	})

	t.Run("VIP balances across every replica", func(t *testing.T) {
		got := m.responders("client", "client", "http://hello.web.svc.cluster.local:8080/", 45)
		if got["FAILED"] > 0 || len(got) != 3 {
			t.Fatalf("responders = %v, want all of %v and no failure", got, names)
		}
		// Hairpin: a replica reaching the service reaches itself too.
		got = m.responders("web", replicas[0].Name, "http://hello:8080/", 45)
		if got["FAILED"] > 0 || got[replicas[0].Name] == 0 {
			t.Fatalf("from %s: responders = %v, want itself among them and no failure", replicas[0].Name, got)
		}
	})

	t.Run("a killed process restarts", func(t *testing.T) {
		victim := replicas[1]
		if err := syscall.Kill(victim.Containers[0].PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var last localmesh.PodStatus
		waitFor(t, "the killed container to restart and be ready", 30*time.Second, func() bool {
			for _, p := range m.pods("web") {
				if p.Name == victim.Name {
					last = p
					c := p.Containers[0]
					return c.Restarts >= 1 && c.PID != 0 && c.PID != victim.Containers[0].PID && p.Ready
				}
			}
			return false
		})
		t.Logf("after the kill: %+v", last.Containers[0])
		if out := m.exec("client", "client", "curl -s -m 2 http://"+victim.IP+":8080/"); !strings.Contains(out, victim.Name) {
			t.Errorf("restarted pod answers %q, want its name", out)
		}
	})

	t.Run("readiness takes a pod out of its service and back", func(t *testing.T) {
		victim := replicas[2]
		endpoint := victim.IP + ":8080"
		marker := filepath.Join(unready, victim.Name)
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the unready pod to leave the endpoints", 15*time.Second, func() bool {
			return !slices.Contains(m.service("web", "hello").Endpoints, endpoint)
		})
		got := m.responders("client", "client", "http://hello.web:8080/", 30)
		if got[victim.Name] > 0 || got["FAILED"] > 0 {
			t.Errorf("responders while %s is unready = %v, want it absent and no failure", victim.Name, got)
		}
		if err := os.Remove(marker); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pod to rejoin the endpoints", 15*time.Second, func() bool {
			return slices.Contains(m.service("web", "hello").Endpoints, endpoint)
		})
	})

	t.Run("logs hold the container's output", func(t *testing.T) {
		if out := m.must("logs", "-n", "web", replicas[0].Name); !strings.Contains(out, "listening on") {
			t.Errorf("logs = %q, want the server's start line", out)
		}
	})

	m.must("down")
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("after down, left on the host: %v", left)
	}
	if got := readSysctl(t, "/proc/sys/net/ipv4/ip_forward"); got != forwardBefore {
		t.Errorf("ip_forward after down = %s, want %s as before", got, forwardBefore)
	}
}

const smallMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: server
        command: [trellis, example, hello-server, --listen, ":8080"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: web}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
`

func TestDownAfterSIGKILL(t *testing.T) {
	m := newMesh(t)
	m.up(smallMesh)
	var pids []int
	waitFor(t, "2 running pods", 30*time.Second, func() bool {
		pids = nil
		for _, p := range m.pods("web") {
			if p.Containers[0].PID != 0 {
				pids = append(pids, p.Containers[0].PID)
			}
		}
		return len(pids) == 2
	})
	st, err := localmesh.NewClient(m.state).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the mesh process to die", 10*time.Second, func() bool { return !localmesh.Running(m.state) })
	if len(leftovers(t)) == 0 {
		t.Fatal("nothing left after SIGKILL: the test would prove nothing")
	}
	out := m.must("down")
	if !strings.Contains(out, "leftover") {
		t.Errorf("down output = %q, want it to report removed leftovers", out)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("after down, left on the host: %v", left)
	}
	for _, pid := range pids {
		waitFor(t, "container process "+strconv.Itoa(pid)+" to be gone", 5*time.Second, func() bool {
			return syscall.Kill(pid, 0) != nil
		})
	}
}

func TestSecondUpRefuses(t *testing.T) {
	m := newMesh(t)
	m.up(smallMesh)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(smallMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"up", "-f", path}, {"up", "-d", "-f", path}} {
		_, errOut, err := m.run(args...)
		if err == nil || !strings.Contains(errOut, "a mesh is already running with state directory "+m.state) {
			t.Errorf("second trellis %v: err %v, stderr %q; want a refusal naming the state directory", args, err, errOut)
		}
	}
	if got := len(m.pods("web")); got != 2 {
		t.Errorf("after the refused ups, the first mesh has %d pods, want 2", got)
	}
	asNobody := exec.Command(trellisBin, "--state-dir", m.state, "get", "pods")
	asNobody.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := asNobody.CombinedOutput(); err == nil || !strings.Contains(string(out), "root-only: run this command with sudo") {
		t.Errorf("get pods as nobody: err %v, output %q; want a message that the API is root-only", err, out)
	}
}

// Bad input starts nothing and says, in one line, what to fix.
func TestUpRefusesBadInput(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name  string
		yaml  string
		flags []string
		want  string
	}{
		{"unknown kind", "apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n", nil, `document 1: unknown kind "Gadget"`},
		{"unknown targetPort name", smallMesh + "---\napiVersion: v1\nkind: Service\nmetadata: {name: alpha, namespace: web}\nspec:\n  selector: {app: hello}\n  ports: [{port: 9080, targetPort: grpc}]\n",
			nil, `Service web/alpha: port 9080: targetPort "grpc" matches no container port`},
		{"pod range overlaps a host route", smallMesh, []string{"--pod-cidr", "127.0.0.0/16"}, "pod range 127.0.0.0/16 overlaps the host route"},
		{"pod and service ranges overlap", smallMesh, []string{"--pod-cidr", "10.210.0.0/16", "--service-cidr", "10.210.128.0/24"}, "pod range 10.210.0.0/16 overlaps service range 10.210.128.0/24"},
		{"a CA certificate without its key", smallMesh, []string{"--ca-cert", "/etc/hostname"}, "--ca-cert and --ca-key go together"},
		{"a CA that is not a certificate", smallMesh, []string{"--ca-cert", "/etc/hostname", "--ca-key", "/etc/hostname"}, "--ca-cert/--ca-key: load CA: the certificate file must start with a CA certificate"},
		{"runAsNonRoot without a user", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, command: [sleep, '9'], securityContext: {runAsNonRoot: true}}]\n",
			nil, `Pod default/p: container "c": securityContext.runAsNonRoot is true but the container would run as root (uid 0): set securityContext.runAsUser`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &mesh{t: t, state: t.TempDir()}
			path := filepath.Join(t.TempDir(), "mesh.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, err := m.run(append([]string{"up", "-d", "-f", path}, tt.flags...)...)
			if err == nil || !strings.Contains(errOut, tt.want) {
				t.Fatalf("up: err %v, stderr %q; want %q", err, errOut, tt.want)
			}
			if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) != 1 {
				t.Errorf("stderr has %d lines, want one: %q", len(lines), errOut)
			}
			if left := leftovers(t); len(left) > 0 {
				t.Errorf("a refused up left on the host: %v", left)
			}
			if _, err := os.Stat(filepath.Join(m.state, "ledger.json")); err == nil {
				t.Errorf("a refused up wrote a ledger")
			}
		})
	}
	t.Run("selector matching nothing only warns", func(t *testing.T) {
		m := newMesh(t)
		path := filepath.Join(t.TempDir(), "mesh.yaml")
		ghost := smallMesh + "---\napiVersion: v1\nkind: Service\nmetadata: {name: ghost, namespace: web}\nspec:\n  selector: {app: ghost}\n  ports: [{port: 80}]\n"
		if err := os.WriteFile(path, []byte(ghost), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := m.run("up", "-d", "-f", path)
		if err != nil || !strings.Contains(errOut, "warning: "+path+": Service web/ghost: selector app=ghost matches no pod") {
			t.Fatalf("up: err %v, stderr %q; want success with a warning", err, errOut)
		}
	})
}

func TestUpWithoutRoot(t *testing.T) {
	needRoot(t) // to switch to an unprivileged user
	state := filepath.Join(t.TempDir(), "state")
	cmd := exec.Command(trellisBin, "--state-dir", state, "up", "-f", "../../examples/hello/mesh.yaml")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "trellis up needs root") {
		t.Fatalf("up as nobody: err %v, output %q; want a message that it needs root", err, out)
	}
	if _, err := os.Stat(state); err == nil {
		t.Errorf("up as nobody created %s", state)
	}
}

func TestApplyAndDeleteChangeARunningMesh(t *testing.T) {
	m := newMesh(t)
	m.up(smallMesh)
	scaled := filepath.Join(t.TempDir(), "scaled.yaml")
	if err := os.WriteFile(scaled, []byte(strings.Replace(smallMesh, "replicas: 2", "replicas: 3", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out := m.must("apply", "-f", scaled)
	if !strings.Contains(out, "deployment.apps/web/hello configured") || !strings.Contains(out, "service/web/hello unchanged") {
		t.Errorf("apply output = %q, want the deployment configured and the service unchanged", out)
	}
	waitFor(t, "3 pods", 30*time.Second, func() bool { return len(m.pods("web")) == 3 })
	out = m.must("delete", "-f", scaled)
	if !strings.Contains(out, "namespace/web deleted") {
		t.Errorf("delete output = %q, want the namespace deleted", out)
	}
	waitFor(t, "the namespace's pods to go", 30*time.Second, func() bool { return len(m.pods("web")) == 0 })
	if left := leftovers(t); slices.ContainsFunc(left, func(s string) bool { return strings.Contains(s, "trellis-web-") }) {
		t.Errorf("deleted pods left on the host: %v", left)
	}
}
