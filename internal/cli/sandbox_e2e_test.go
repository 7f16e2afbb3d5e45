package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/localmesh"
)

// sandboxMesh has an injected pod whose containers try to get out, as root
// in the pod (with no capabilities, and with every one), and as uid 1000;
// a second injected pod whose token they must not read; a read-only pod;
// and two pods whose namespace/name pairs ran together in the old netns
// names ("a-b"/"c" and "a"/"b-c").
const sandboxMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: s, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: target, namespace: s}
spec:
  containers:
  - {name: root, command: [sleep, "3600"], workingDir: %[1]s}
  - {name: capable, command: [sleep, "3600"], workingDir: %[1]s, securityContext: {capabilities: {add: [ALL]}}}
  - name: user
    command: [sh, -c, "echo ids $(id -u) $(id -g) $(id -G); exec sleep 3600"]
    securityContext: {runAsUser: 1000, runAsGroup: 1000}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: s}
spec:
  containers: [{name: c, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: readonly, namespace: s}
spec:
  securityContext: {runAsUser: 2000, runAsNonRoot: true}
  containers: [{name: c, command: [sleep, "3600"], securityContext: {readOnlyRootFilesystem: true}}]
---
apiVersion: v1
kind: Namespace
metadata: {name: a-b}
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
`

// collidingPods are the two pods whose old netns names were the same.
const collidingPods = `
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: a-b}
spec:
  containers: [{name: c, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b-c, namespace: a}
spec:
  containers: [{name: c, command: [sleep, "3600"]}]
`

// A process in a pod, root inside it, tries every way out the isolation
// issue names: the CA key, other pods' tokens, the admin sockets, its
// pod's capture rules and routes, the host's namespaces, its sidecar, and
// writing outside /tmp. Each must fail, with and without capabilities.
func TestSandboxHolds(t *testing.T) {
	m := newMesh(t)
	dir := filepath.Dir(trellisBin) // 0755: what pods may read
	helper := filepath.Join(dir, "escape")
	if out, err := exec.Command("go", "build", "-o", helper, "./testdata/escape").CombinedOutput(); err != nil {
		t.Fatalf("build the escape helper: %v\n%s", err, out)
	}
	m.up(fmt.Sprintf(sandboxMesh, dir) + "---\n" + collidingPods)
	waitFor(t, "the pods to be ready", 30*time.Second, func() bool {
		return len(readyPods(m.pods("s"))) == 3 && len(readyPods(m.pods("a-b"))) == 1 && len(readyPods(m.pods("a"))) == 1
	})
	sidecar := sidecarPID(t, m, "s", "target")

	attempt := func(t *testing.T, container string) map[string]string {
		args := []string{"exec", "-n", "s", "target", "-c", container, "--", helper,
			"-read", strings.Join([]string{
				filepath.Join(m.state, "control", "ca", "ca-key.pem"),
				filepath.Join(m.state, "pods", "s", "other", "token"),
				filepath.Join(m.state, "pods", "s", "target", "token"),
				filepath.Join(m.state, "registry.json"),
				"/etc/shadow",
			}, ","),
			"-connect", filepath.Join(m.state, "api.sock") + "," + filepath.Join(m.state, "control", "control.sock"),
			"-write", dir + "," + m.state,
			"-sidecar", strconv.Itoa(sidecar)}
		out := m.must(args...)
		t.Logf("the helper in container %s:\n%s", container, out)
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			name, verdict, _ := strings.Cut(line, ": ")
			got[name] = verdict
		}
		if len(got) < 25 {
			t.Fatalf("the helper made %d attempts, want at least 25:\n%s", len(got), out)
		}
		if got["control write /tmp"] != "<nil>" {
			t.Errorf("writing /tmp, which the pod is given, failed: %q", got["control write /tmp"])
		}
		return got
	}
	for _, c := range []string{"root", "capable"} {
		t.Run(c, func(t *testing.T) {
			for name, verdict := range attempt(t, c) {
				if strings.HasPrefix(name, "control ") || (c == "capable" && name == "hold capabilities") {
					continue
				}
				if !strings.HasPrefix(verdict, "blocked") {
					t.Errorf("%s: %s", name, verdict)
				}
			}
		})
	}

	t.Run("runAsUser", func(t *testing.T) {
		waitFor(t, "the user container's output", 10*time.Second, func() bool {
			return strings.Contains(m.must("logs", "-n", "s", "target", "-c", "user"), "ids ")
		})
		if got := m.must("logs", "-n", "s", "target", "-c", "user"); !strings.Contains(got, "ids 1000 1000 1000\n") {
			t.Errorf("the container with runAsUser 1000 printed %q, want ids 1000 1000 1000", got)
		}
		if got := m.must("exec", "-n", "s", "target", "-c", "user", "--", "id", "-u"); got != "1000\n" {
			t.Errorf("trellis exec into it runs as %q, want 1000", got)
		}
		if got := m.must("exec", "-n", "s", "readonly", "--", "id", "-u"); got != "2000\n" {
			t.Errorf("the pod-level runAsUser 2000 runs as %q", got)
		}
	})

	t.Run("readOnlyRootFilesystem", func(t *testing.T) {
		out, _, err := m.run("exec", "-n", "s", "readonly", "--", "sh", "-c", "echo x > /tmp/x")
		if err == nil {
			t.Errorf("a read-only container wrote /tmp: %q", out)
		}
	})

	t.Run("pods whose old netns names collided run and go apart", func(t *testing.T) {
		p1, p2 := m.pods("a-b")[0], m.pods("a")[0]
		if p1.Netns == p2.Netns {
			t.Fatalf("a-b/c and a/b-c share the network namespace %s", p1.Netns)
		}
		path := filepath.Join(t.TempDir(), "one.yaml")
		one, _, _ := strings.Cut(strings.TrimPrefix(collidingPods, "\n"), "---")
		if err := os.WriteFile(path, []byte(one), 0o600); err != nil {
			t.Fatal(err)
		}
		m.must("delete", "-f", path)
		waitFor(t, "a-b/c to be gone", 30*time.Second, func() bool {
			_, err := os.Stat("/run/netns/" + p1.Netns)
			return len(m.pods("a-b")) == 0 && err != nil
		})
		if _, err := os.Stat("/run/netns/" + p2.Netns); err != nil {
			t.Errorf("deleting a-b/c removed a/b-c's network namespace: %v", err)
		}
		if got := m.must("exec", "-n", "a", "b-c", "--", "echo", "alive"); got != "alive\n" {
			t.Errorf("a/b-c after a-b/c's deletion: %q", got)
		}
	})
}

func readyPods(pods []localmesh.PodStatus) []string {
	var out []string
	for _, p := range pods {
		if p.Ready {
			out = append(out, p.Name)
		}
	}
	return out
}

// sidecarPID returns the pid of the sidecar process of pod ns/name.
func sidecarPID(t *testing.T, m *mesh, ns, name string) int {
	t.Helper()
	for _, p := range m.pods(ns) {
		for _, c := range p.Containers {
			if p.Name != name || c.Name != "trellis-proxy" {
				continue
			}
			return containerProcess(t, c.PID)
		}
	}
	t.Fatalf("pod %s/%s has no sidecar", ns, name)
	return 0
}

// containerProcess returns the pid of a container's program: the only child
// of the supervisor whose pid the runtime reports.
func containerProcess(t *testing.T, supervisor int) int {
	t.Helper()
	// The child is of the thread that forked it, any of them.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", supervisor))
	var children []string
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		children = append(children, strings.Fields(string(b))...)
	}
	if len(children) != 1 {
		t.Fatalf("the container supervisor %d has children %q, want one", supervisor, children)
	}
	pid, _ := strconv.Atoi(children[0])
	return pid
}
