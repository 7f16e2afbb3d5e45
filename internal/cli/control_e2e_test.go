package cli_test

// The control plane under load, end to end in real namespaces: it is taken
// away for a minute, certificates live 20 s, the root rotates, a service
// scales up and down, and a client sending 500 requests a second through
// its sidecar sees no failure.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/push"
)

// availabilityMesh: the hello Deployment (replicas set per test) and a
// meshed client.
const availabilityMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: client, labels: {trellis.io/inject: enabled}}
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
`

func helloDeployment(replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: web}
spec:
  replicas: %d
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
`, replicas)
}

const helloURL = "http://hello.web.svc.cluster.local:8080/"

// load runs `trellis example load` in the client pod in the background;
// wait returns its report.
func (m *mesh) load(rate int, d time.Duration) (wait func() cli.LoadReport) {
	var rep cli.LoadReport
	var out, errOut string
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, errOut, err = m.runWithin(d+time.Minute, "exec", "-n", "client", "client", "--", "trellis", "example", "load",
			"--rate", fmt.Sprint(rate), "--duration", d.String(), "--timeout", "5s", helloURL)
	}()
	return func() cli.LoadReport {
		m.t.Helper()
		wg.Wait()
		if err != nil {
			m.t.Fatalf("load: %v\n%s\n%s", err, out, errOut)
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			m.t.Fatalf("load report %q: %v", out, err)
		}
		return rep
	}
}

func (m *mesh) apply(doc string) {
	m.t.Helper()
	path := filepath.Join(m.t.TempDir(), "apply.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		m.t.Fatal(err)
	}
	m.must("apply", "-f", path)
}

func (m *mesh) proxyStatus() []push.ProxyStatus {
	m.t.Helper()
	var st []push.ProxyStatus
	if err := json.Unmarshal([]byte(m.must("proxy-status", "-o", "json")), &st); err != nil {
		m.t.Fatal(err)
	}
	return st
}

// waitClientServed waits until the client's sidecar serves hello.web: the
// proxies may have acked a version pushed before the replicas turned ready
// (the control plane debounces), whose endpoint list is still empty.
func (m *mesh) waitClientServed(t *testing.T) {
	t.Helper()
	waitFor(t, "the client's sidecar to know hello.web's endpoints", 15*time.Second, func() bool {
		got := m.responders("client", "client", helloURL, 5)
		for answer := range got { // pod names, or an error page or FAILED
			if answer == "FAILED" || strings.Contains(answer, " ") {
				return false
			}
		}
		return len(got) > 0
	})
}

// allSynced: every pod's proxy is connected and acked what the control
// plane would send it now.
func (m *mesh) allSynced(want int) bool {
	st := m.proxyStatus()
	n := 0
	for _, p := range st {
		if p.Connected && p.AckedVersion == p.WantVersion && p.Bundle == p.WantBundle {
			n++
		}
	}
	return n == want
}

func (m *mesh) readyPods(ns string) []string {
	var names []string
	for _, p := range m.pods(ns) {
		if p.Ready {
			names = append(names, p.Name)
		}
	}
	return names
}

func (m *mesh) checkNoFailures(t *testing.T, what string, rep cli.LoadReport) {
	t.Helper()
	t.Logf("%s: %d sent, %d ok, %d failed; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms; responders %v",
		what, rep.Sent, rep.OK, rep.Failed, rep.P50, rep.P99, rep.Max, counts(rep))
	if rep.Failed > 0 || rep.OK == 0 {
		t.Errorf("%s: %d of %d requests failed; first errors:\n%s\n%s", what, rep.Failed, rep.Sent, strings.Join(rep.Errors, "\n"), m.sidecarLogs())
	}
}

// sidecarLogs is each container's state and restarts, and the last lines
// every container wrote of its own (not the access log): what a failure
// needs explained.
func (m *mesh) sidecarLogs() string {
	var b strings.Builder
	for _, ns := range []string{"web", "client"} {
		for _, p := range m.pods(ns) {
			for _, c := range p.Containers {
				fmt.Fprintf(&b, "--- %s/%s %s (ip %s): %s, %d restarts, last exit %d\n", ns, p.Name, c.Name, p.IP, c.State, c.Restarts, c.ExitCode)
				logs, _, _ := m.run("logs", "-n", ns, p.Name, "-c", c.Name)
				var own []string
				for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
					if !strings.Contains(line, `"reporter":`) {
						own = append(own, line)
					}
				}
				b.WriteString(strings.Join(own[max(0, len(own)-10):], "\n") + "\n")
			}
		}
	}
	return b.String()
}

func counts(rep cli.LoadReport) map[string]int {
	out := map[string]int{}
	for k, v := range rep.Responders {
		out[k] = v.Count
	}
	return out
}

func TestControlPlaneOutageRotationAndScaling(t *testing.T) {
	m := newMesh(t)
	m.up(availabilityMesh + "---\n" + helloDeployment(2))
	waitFor(t, "2 ready replicas and 3 synced proxies", 60*time.Second, func() bool {
		return len(m.readyPods("web")) == 2 && m.allSynced(3)
	})
	m.waitClientServed(t)

	t.Run("control plane away for 60 s: no failed request, an endpoint added meanwhile is learned", func(t *testing.T) {
		before := m.readyPods("web")
		wait := m.load(500, 85*time.Second)
		time.Sleep(5 * time.Second)
		m.must("control-plane", "stop")
		stopped := time.Now()
		// A new replica cannot get its certificate while the control plane
		// is away (as in Istio): it starts, and stays unready.
		m.apply(helloDeployment(3))
		time.Sleep(time.Until(stopped.Add(60 * time.Second)))
		if len(m.readyPods("web")) != 2 {
			t.Errorf("a replica became ready without a control plane to certify it: %v", m.readyPods("web"))
		}
		m.must("control-plane", "start")
		restarted := time.Now()
		var added string
		waitFor(t, "the third replica to be ready", 20*time.Second, func() bool {
			for _, p := range m.readyPods("web") {
				if !slices.Contains(before, p) {
					added = p
				}
			}
			return added != ""
		})
		waitFor(t, "every proxy to reconnect and sync", 15*time.Second, func() bool { return m.allSynced(4) })
		t.Logf("proxies synced and the new replica ready %s after the restart", time.Since(restarted).Round(time.Millisecond))
		rep := wait()
		m.checkNoFailures(t, "500 rps across the outage", rep)
		if rep.Responders[added] == nil {
			t.Errorf("the replica %s added while the control plane was away got no traffic after it returned", added)
		}
	})

	t.Run("root rotation under load", func(t *testing.T) {
		wait := m.load(500, 20*time.Second)
		time.Sleep(2 * time.Second)
		out := m.must("ca", "rotate", "--timeout", "15s")
		t.Log(out)
		m.checkNoFailures(t, "500 rps across root rotation", wait())
	})

	t.Run("scaling up and down under load", func(t *testing.T) {
		wait := m.load(500, 25*time.Second)
		time.Sleep(2 * time.Second)
		before := m.readyPods("web")
		m.apply(helloDeployment(5))
		readyAt := map[string]time.Time{}
		waitFor(t, "5 ready replicas", 30*time.Second, func() bool {
			for _, p := range m.readyPods("web") {
				if _, ok := readyAt[p]; !ok && !slices.Contains(before, p) {
					readyAt[p] = time.Now()
				}
			}
			return len(readyAt) == 2
		})
		time.Sleep(5 * time.Second)
		m.apply(helloDeployment(1))
		goneAt := map[string]time.Time{}
		waitFor(t, "1 replica left", 30*time.Second, func() bool {
			pods := m.pods("web")
			for _, name := range append(slices.Clone(before), keys(readyAt)...) {
				if !slices.ContainsFunc(pods, func(p localmesh.PodStatus) bool { return p.Name == name }) {
					if _, ok := goneAt[name]; !ok {
						goneAt[name] = time.Now()
					}
				}
			}
			return len(pods) == 1
		})
		rep := wait()
		m.checkNoFailures(t, "500 rps while scaling 3 -> 5 -> 1", rep)
		for name, at := range readyAt {
			st := rep.Responders[name]
			switch {
			case st == nil:
				t.Errorf("new replica %s got no traffic", name)
			case st.First.Sub(at) > time.Second:
				t.Errorf("new replica %s got its first request %s after it was seen ready; want within 1 s", name, st.First.Sub(at).Round(time.Millisecond))
			}
		}
		for name, at := range goneAt {
			if st := rep.Responders[name]; st != nil && st.Last.After(at) {
				t.Errorf("removed replica %s answered at %s, after it was gone at %s", name, st.Last, at)
			}
		}
	})
}

func TestShortLivedCertificatesUnderLoad(t *testing.T) {
	m := newMesh(t)
	m.up(availabilityMesh+"---\n"+helloDeployment(2), "--svid-ttl", "20s")
	waitFor(t, "2 ready replicas and 3 synced proxies", 60*time.Second, func() bool {
		return len(m.readyPods("web")) == 2 && m.allSynced(3)
	})
	m.waitClientServed(t)
	serials := func() map[string]bool {
		out := map[string]bool{}
		for _, p := range m.proxyStatus() {
			out[p.Namespace+"/"+p.Pod+"@"+p.CertNotAfter.String()] = true
		}
		return out
	}
	first := serials()
	m.checkNoFailures(t, "500 rps for 2 minutes with 20 s certificates", m.load(500, 2*time.Minute)())
	// Every proxy renewed several times (every ~10 s).
	for k := range first {
		if serials()[k] {
			t.Errorf("proxy %s still has the certificate it had 2 minutes ago", k)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
