package localmesh

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

func TestIPAM(t *testing.T) {
	a := newIPAM(netip.MustParsePrefix("10.9.0.0/29"), 2)
	var got []string
	for {
		ip, err := a.allocate()
		if err != nil {
			if !strings.Contains(err.Error(), "10.9.0.0/29 is exhausted") {
				t.Fatalf("allocate() error = %v, want exhaustion", err)
			}
			break
		}
		got = append(got, ip.String())
	}
	// .0 network and .1 gateway skipped, .7 broadcast never handed out.
	if want := "10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6"; strings.Join(got, " ") != want {
		t.Fatalf("allocations = %v, want %s", got, want)
	}
	a.release(netip.MustParseAddr("10.9.0.4"))
	if ip, err := a.allocate(); err != nil || ip.String() != "10.9.0.4" {
		t.Errorf("allocate() after release = %v, %v; want 10.9.0.4", ip, err)
	}
}

func TestLedgerPersistsInOrder(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Resource{{Kind: resSysctl, Name: "/x", Old: "0"}, {Kind: resLink, Name: "br"}, {Kind: resNetns, Name: "ns"}} {
		if err := l.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Add(Resource{Kind: resLink, Name: "br"}) // twice is once
	if err := l.Remove(resLink, "br"); err != nil {
		t.Fatal(err)
	}
	again, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	items := again.Items()
	if len(items) != 2 || items[0].Name != "ns" || items[1].Old != "0" {
		t.Errorf("reopened ledger items = %+v, want ns then /x (newest first)", items)
	}
	if err := os.WriteFile(filepath.Join(dir, ledgerFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLedger(dir); err == nil || !strings.Contains(err.Error(), "remove it only after cleaning up by hand") {
		t.Errorf("OpenLedger(corrupt) error = %v, want advice", err)
	}
}

func TestLockRefusesSecondHolder(t *testing.T) {
	dir := t.TempDir()
	f, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !Running(dir) {
		t.Error("Running() = false while locked")
	}
	if _, err := Lock(dir); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Lock() error = %v, want ErrAlreadyRunning", err)
	}
	f.Close()
	if Running(dir) {
		t.Error("Running() = true after the lock was released")
	}
}

func testRuntime(t *testing.T, yaml string) *Runtime {
	t.Helper()
	r, err := New(Config{StateDir: t.TempDir(), Executable: "/opt/trellis/bin/trellis"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := manifest.Parse([]manifest.Source{{Name: "m.yaml", Data: []byte(yaml)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.apply(set); err != nil {
		t.Fatal(err)
	}
	r.reconcileVIPsLocked()
	return r
}

const twoServices = `
apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Service
metadata: {name: graph-alpha, namespace: db}
spec:
  selector: {app: alpha}
  ports: [{name: http, port: 8080}, {name: grpc, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
`

func TestHostsFileAndServiceEnv(t *testing.T) {
	r := testRuntime(t, twoServices)
	p := &pod{obj: &catalog.Pod{Meta: catalog.Meta{Name: "a", Namespace: "db"}, Spec: catalog.PodSpec{ServiceAccount: "default"}},
		ip: netip.MustParseAddr("10.200.0.7")}
	hosts := r.hostsContentLocked(p)
	for _, want := range []string{
		"10.200.0.7\ta\n",
		"10.201.0.1\tgraph-alpha.db.svc.cluster.local graph-alpha.db.svc graph-alpha.db graph-alpha\n",
		"10.201.0.2\tweb.default.svc.cluster.local web.default.svc web.default\n", // no short name across namespaces
	} {
		if !strings.Contains(hosts, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, hosts)
		}
	}
	env := strings.Join(r.containerEnvLocked(p.obj, p.ip, catalog.Container{
		Env: []catalog.EnvVar{{Name: "POD_NAME", Value: "override"}, {Name: "ME", FieldPath: "status.podIP"}},
	}), "\n") + "\n"
	for _, want := range []string{
		"PATH=/run/trellis/bin:", "GRAPH_ALPHA_SERVICE_HOST=10.201.0.1\n", "GRAPH_ALPHA_SERVICE_PORT=8080\n",
		"GRAPH_ALPHA_SERVICE_PORT_GRPC=9080\n", "POD_NAMESPACE=db\n", "POD_IP=10.200.0.7\n",
		"SERVICE_ACCOUNT=default\n", "POD_NAME=override\n", "ME=10.200.0.7\n",
	} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %q:\n%s", want, env)
		}
	}
	if strings.Contains(env, "WEB_SERVICE_HOST") {
		t.Errorf("env has another namespace's service:\n%s", env)
	}
}

// The container tests run real processes. Entering a pod needs root and the
// trellis binary, so a two-line script stands in for `trellis __nsexec`: it
// drops the netns arguments and execs the command (the pod part is covered
// by the end-to-end tests in internal/cli).
func fakeEnter(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "enter")
	script := "#!/bin/sh\nshift 3\nexec \"$@\"\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func testContainer(t *testing.T, policy catalog.RestartPolicy, script string) (*container, *atomic.Int32) {
	t.Helper()
	changes := &atomic.Int32{}
	cfg := &Config{Executable: fakeEnter(t), WorkDir: t.TempDir(), RestartBackoff: 20 * time.Millisecond, MaxRestartBackoff: 80 * time.Millisecond}
	return &container{
		spec: catalog.Container{Name: "c", Command: []string{"sh", "-c", script}}, podName: "ns/p", netns: "pod",
		env: []string{"PATH=" + os.Getenv("PATH")}, logPath: filepath.Join(t.TempDir(), "c.log"),
		policy: policy, grace: 200 * time.Millisecond, cfg: cfg, changed: func() { changes.Add(1) },
		backoff: cfg.RestartBackoff, maxBackoff: cfg.MaxRestartBackoff,
		state: stateWaiting,
	}, changes
}

func runContainer(t *testing.T, c *container, d time.Duration) ContainerStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(d + 5*time.Second):
		t.Fatal("container supervisor did not return")
	}
	return c.status()
}

func TestRestartPolicies(t *testing.T) {
	tests := []struct {
		policy       catalog.RestartPolicy
		script       string
		wantRestarts func(int) bool
		wantReason   string
	}{
		{catalog.RestartAlways, "exit 0", func(n int) bool { return n >= 3 }, "Killed"},
		{catalog.RestartOnFailure, "exit 0", func(n int) bool { return n == 0 }, "Completed"},
		{catalog.RestartOnFailure, "exit 3", func(n int) bool { return n >= 3 }, "Killed"},
		{catalog.RestartNever, "exit 3", func(n int) bool { return n == 0 }, "Error"},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy)+"/"+tt.script, func(t *testing.T) {
			c, _ := testContainer(t, tt.policy, "echo started; "+tt.script)
			st := runContainer(t, c, 600*time.Millisecond)
			if !tt.wantRestarts(st.Restarts) || st.Reason != tt.wantReason {
				t.Errorf("after 600ms: restarts %d, reason %q; want reason %q", st.Restarts, st.Reason, tt.wantReason)
			}
			log, _ := os.ReadFile(c.logPath)
			// The last start may be stopped before it printed anything.
			if got := strings.Count(string(log), "started\n"); got != st.Restarts+1 && got != st.Restarts {
				t.Errorf("log has %d starts, want %d (restarts+1)", got, st.Restarts+1)
			}
		})
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	c, changes := testContainer(t, catalog.RestartAlways, "trap '' TERM; while :; do sleep 0.05; done")
	start := time.Now()
	st := runContainer(t, c, 300*time.Millisecond)
	if d := time.Since(start); d < 450*time.Millisecond || d > 3*time.Second {
		t.Errorf("stop took %s, want about the 200ms grace after 300ms", d)
	}
	if st.State != stateTerminated || st.PID != 0 {
		t.Errorf("status after stop = %+v, want terminated", st)
	}
	if changes.Load() < 2 {
		t.Errorf("readiness changes = %d, want ready then not ready", changes.Load())
	}
}
