package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBedRunsPodsAndCleansUp brings the bed up (building it when the cache
// lacks this version set), runs a Deployment of a locally built image,
// reaches it from the host by pod address and ClusterIP, resolves a
// service name through cluster DNS from inside a pod, and takes the bed
// down again, checking that nothing of it is left on the host.
func TestBedRunsPodsAndCleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute) // a cold build is most of it
	defer cancel()
	step := stepper(t)
	bed := startBed(t, ctx)
	step("up")

	loadHello(t, ctx, bed)
	apply(t, ctx, bed, helloManifest)
	if _, err := bed.kubectl(ctx, "-n", "hello", "rollout", "status", "deployment/hello", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	step("hello deployed")
	podIP, _ := bed.kubectl(ctx, "-n", "hello", "get", "pods", "-o", "jsonpath={.items[0].status.podIP}")
	clusterIP, _ := bed.kubectl(ctx, "-n", "hello", "get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}")

	for _, url := range []string{"http://" + podIP + ":8080/", "http://" + clusterIP + ":80/"} {
		if got := get(t, url); !strings.HasPrefix(got, "hello from hello-") {
			t.Errorf("GET %s from the host = %q, want the pod's greeting", url, got)
		}
	}
	want := "[" + clusterIP + "]"
	if got := strings.TrimSpace(get(t, "http://"+podIP+":8080/resolve?name=hello.hello.svc.cluster.local")); got != want {
		t.Errorf("cluster DNS in the pod: hello.hello.svc.cluster.local = %q, want %s", got, want)
	}

	step("reached and resolved")

	// Trellis's own images, built by its CLI from this checkout and
	// loaded into the node, run there (as the user each image names).
	buildTrellis(t, ctx, bed)
	apply(t, ctx, bed, imagesManifest())
	for _, name := range []string{"trellis-control", "trellis-proxy", "trellis-node"} {
		if err := waitFor(ctx, name+" to run", time.Minute, func() error {
			phase, err := bed.kubectl(ctx, "-n", "hello", "get", "pod", name, "-o", "jsonpath={.status.phase}")
			if err == nil && phase != "Succeeded" {
				err = fmt.Errorf("phase %q", phase)
			}
			return err
		}); err != nil {
			logs, _ := bed.kubectl(ctx, "-n", "hello", "logs", name)
			t.Errorf("%v\n%s", err, logs)
		}
	}
	step("trellis images ran")
	if err := bed.Down(ctx); err != nil {
		t.Fatalf("Down() = %v", err)
	}
	step("down")
	checkNothingLeft(t, bed)

	// A crash: every component SIGKILLed with the pods still running
	// (their shims, containers, cgroups, mounts and network namespaces).
	if err := bed.Up(ctx); err != nil {
		t.Fatalf("Up() again = %v", err)
	}
	step("up again")
	next := &Bed{cfg: Config{Dir: filepath.Join(t.TempDir(), "next"), Cache: bed.cfg.Cache, Source: bed.cfg.Source}}
	if err := next.takeOverNetwork(ctx); err == nil || !strings.Contains(err.Error(), "another bed runs") {
		t.Errorf("a new bed while one runs: %v, want it refused", err)
	}
	for _, p := range processes() {
		if err := syscall.Kill(bed.pid(p.name), syscall.SIGKILL); err != nil {
			t.Errorf("kill %s: %v", p.name, err)
		}
	}
	if err := waitFor(ctx, "the killed components to be gone", 10*time.Second, func() error {
		if bed.running() {
			return fmt.Errorf("some still run")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The next bed, in a directory of its own, finds the namespace held
	// by the crashed one and takes that bed down before making its own.
	if err := next.takeOverNetwork(ctx); err != nil {
		t.Fatalf("a new bed after a crash: %v", err)
	}
	step("down after a crash")
	checkNothingLeft(t, bed)
}

// checkNothingLeft fails t for anything of the bed left on the host.
func checkNothingLeft(t *testing.T, bed *Bed) {
	t.Helper()
	for _, p := range append([]string{"/run/netns/" + netnsName, netnsOwner, "/sys/class/net/" + hostLink, bed.cfg.Dir}, pathsOutsideDir...) {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("after Down, %s is still there", p)
		}
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods*"); len(left) > 0 {
		t.Errorf("after Down, pod cgroups are left: %v", left)
	}
	if pids := running("-f", bed.bin); len(pids) > 0 {
		t.Errorf("after Down, processes of the bed still run: %v", pids)
	}
	if pids := running("-x", "pause"); len(pids) > 0 {
		t.Errorf("after Down, pod sandboxes still run: %v", pids)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), bed.cfg.Dir) {
		t.Errorf("after Down, mounts under %s are left", bed.cfg.Dir)
	}
	if routes, _ := exec.Command("ip", "route", "show", podCIDR).Output(); len(routes) > 0 {
		t.Errorf("after Down, the route to the pods is left: %s", routes)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	// Longer than the workloads' own calls take to fail (10s): a /fetch
	// whose call a policy drops answers with that failure, not our timeout.
	client := &http.Client{Timeout: 15 * time.Second}
	var last error
	for range 20 {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(body)
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("GET %s: %v", url, last)
	return fmt.Sprint(last)
}

var helloManifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: hello}\n" + helloDeployment("hello", "hello", 1, "") + `---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: hello}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
`

// running lists the processes pgrep finds with args that are alive (a
// killed one may wait a moment for its reaper).
func running(args ...string) []int {
	out, _ := exec.Command("pgrep", args...).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		for i := 0; alive(pid) && i < 50; i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// imagesManifest runs each Trellis image once with -help (which exits 0).
func imagesManifest() string {
	var docs []string
	for _, name := range []string{"trellis-control", "trellis-proxy", "trellis-node"} {
		docs = append(docs, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: hello}
spec:
  restartPolicy: Never
  containers: [{name: c, image: trellis.local/%[1]s:bedtest, imagePullPolicy: Never, args: [-help]}]
`, name))
	}
	return strings.Join(docs, "---\n")
}
