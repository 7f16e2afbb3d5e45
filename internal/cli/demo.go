package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/examples/demo"
	"github.com/trellis-mesh/trellis/examples/graphdb"
	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

type demoOptions struct {
	*options
	keep    bool
	timeout time.Duration
	traffic time.Duration
	// On Kubernetes: the cluster, the demo image, and the install's
	// values when the demo installs Trellis.
	kubernetes bool
	cluster    kubeclient.Target
	image      string
	values     valuesFlags
}

func newDemoCmd(o *options) *cobra.Command {
	d := &demoOptions{options: o}
	cmd := &cobra.Command{
		Use:   "demo [--keep] [--kubernetes]",
		Short: "Run the reference walkthrough: a database only mesh members may reach, and its service graph",
		Long: `Run the reference walkthrough on this host, narrating each step:

  namespace db (injected): demo-graph-alpha (HTTP 8080 /health, /query; gRPC 9080)
                           and its coordinator demo-graph-zero (gRPC 5080)
  namespace client-allow (injected) and client-deny (not injected): a client pod each

  TEST 0  no policy: both clients reach HTTP /health and gRPC CheckVersion
  TEST 1  NetworkPolicy "mesh members only": the client outside the mesh times out
  TEST 2  the client in the mesh still succeeds, through its sidecar, with mTLS
  TEST 3  traffic (health, CheckVersion, a Star Wars dataset loaded over gRPC,
          queries over HTTP) and the service graph it makes

Exits non-zero when any expected result does not hold. Cleans up after itself
unless --keep, which leaves the mesh and its dashboard running.

With --kubernetes it runs the same walkthrough on the cluster of the
kubeconfig: it installs Trellis when it is not (and removes it again
afterwards unless --keep), applies examples/kubernetes (the trellis-demo
image, built with the others by ` + "`trellis images build`" + `), and makes the
clients' calls through the API server, as kubectl exec does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return d.run(ctx)
		},
	}
	cmd.Flags().BoolVar(&d.keep, "keep", false, "leave everything running for exploration (stop it with `trellis down`)")
	cmd.Flags().DurationVar(&d.timeout, "timeout", 3*time.Second, "how long a client waits for an answer before it counts as timed out")
	cmd.Flags().DurationVar(&d.traffic, "traffic", 10*time.Second, "how long test 3 generates traffic")
	cmd.Flags().BoolVar(&d.kubernetes, "kubernetes", false, "run on the Kubernetes cluster of the kubeconfig instead of this host")
	targetFlags(cmd, &d.cluster, "with --kubernetes: ")
	cmd.Flags().StringVar(&d.image, "image", "", "with --kubernetes: the demo workloads' image (default: trellis-demo beside the installed control plane's image)")
	d.values.register(cmd, "")
	return cmd
}

// demoRun is one run of the walkthrough: where it runs, its clock and the
// checks that failed.
type demoRun struct {
	*demoOptions
	mesh     demoMesh
	start    time.Time
	checks   int
	failures []string
}

// demoMesh is where the walkthrough runs: this host or a Kubernetes
// cluster. The tests are the same on both.
type demoMesh interface {
	// where names it for the banner.
	where() string
	// up starts the workloads and returns once the clients' calls can
	// reach the database.
	up(ctx context.Context, r *demoRun) error
	// exec runs a command in namespace ns's client pod and returns its
	// output, or an error with what it printed.
	exec(ctx context.Context, ns string, args ...string) (string, error)
	// enforce applies the walkthrough's NetworkPolicy and returns once
	// the node agent has it in the kernel.
	enforce(ctx context.Context) error
	// authorize applies the walkthrough's AuthorizationPolicy.
	authorize(ctx context.Context) error
	// graph reads the dashboard's service graph.
	graph(ctx context.Context, window time.Duration, namespaces []string) (*servicegraph.Graph, error)
	// clientID is the SPIFFE ID of client-allow's pod.
	clientID() string
	// curl says whether the client pods have curl.
	curl() bool
	// dashboard says where the dashboard is.
	dashboard() string
	// down removes what the walkthrough created.
	down(ctx context.Context) error
	// keepHint says how to look around and stop what --keep left.
	keepHint() string
}

func (d *demoOptions) run(ctx context.Context) error {
	if d.timeout < 100*time.Millisecond || d.timeout > time.Minute || d.traffic < time.Second || d.traffic > 10*time.Minute {
		return fmt.Errorf("--timeout must be 100ms..1m and --traffic 1s..10m (got %s, %s)", d.timeout, d.traffic)
	}
	var mesh demoMesh
	var err error
	if d.kubernetes {
		mesh, err = newKubeDemo(ctx, d)
	} else {
		mesh, err = newHostDemo(d)
	}
	if err != nil {
		return err
	}
	r := &demoRun{demoOptions: d, mesh: mesh, start: time.Now()}
	fmt.Fprintf(d.out, "trellis demo: the reference walkthrough, %s\n\n", mesh.where())
	err = r.walk(ctx)
	if !d.keep {
		r.say("cleaning up")
		if derr := mesh.down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", derr))
		}
	}
	if err != nil {
		return err
	}
	if len(r.failures) > 0 {
		hint := ""
		if !d.keep {
			hint = "\n(run `" + d.rerun() + "` to look around after a failure)"
		}
		return fmt.Errorf("%d of %d checks failed:\n  %s%s", len(r.failures), r.checks, strings.Join(r.failures, "\n  "), hint)
	}
	fmt.Fprintf(d.out, "\nall %d checks passed in %s\n", r.checks, time.Since(r.start).Round(100*time.Millisecond))
	if d.keep {
		fmt.Fprintf(d.out, "left running: %s\n", mesh.keepHint())
	}
	return nil
}

// rerun is the command that runs this demo again, leaving it up.
func (d *demoOptions) rerun() string {
	if d.kubernetes {
		return "trellis demo --kubernetes --keep"
	}
	return "trellis demo --keep"
}

// walk runs the steps; an error is a step that could not run at all.
func (r *demoRun) walk(ctx context.Context) error {
	if err := r.mesh.up(ctx, r); err != nil {
		return err
	}
	r.test0(ctx)
	if err := r.test1(ctx); err != nil {
		return err
	}
	r.test2(ctx)
	if err := r.test3(ctx); err != nil {
		return err
	}
	if err := r.test4(ctx); err != nil {
		return err
	}
	note := " (run `" + r.rerun() + "` to keep it up)"
	if r.keep {
		note = ""
	}
	r.say("dashboard: %s%s", r.mesh.dashboard(), note)
	return nil
}

func (r *demoRun) say(format string, args ...any) {
	fmt.Fprintf(r.out, "[%5.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// check records one expected result and prints it.
func (r *demoRun) check(what string, ok bool, detail string) {
	r.checks++
	mark := "ok  "
	if !ok {
		mark = "FAIL"
		r.failures = append(r.failures, what+": "+detail)
	}
	fmt.Fprintf(r.out, "         %s  %-44s %s\n", mark, what, detail)
}

// hostDemo runs the walkthrough on this host, in one-host mode.
type hostDemo struct {
	*demoOptions
	exe string
}

func newHostDemo(d *demoOptions) (*hostDemo, error) {
	if err := requireRoot("trellis demo"); err != nil {
		return nil, err
	}
	if localmesh.Running(d.stateDir) {
		return nil, fmt.Errorf("a mesh is already running with state directory %s: stop it with `trellis down` first", d.stateDir)
	}
	if ln, err := net.Listen("tcp", defaultDashboard); err != nil {
		return nil, fmt.Errorf("the dashboard's address %s is taken (%v): stop what listens there first", defaultDashboard, err)
	} else {
		ln.Close()
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &hostDemo{demoOptions: d, exe: exe}, nil
}

func (h *hostDemo) where() string { return fmt.Sprintf("on this host (state %s)", h.stateDir) }

func (h *hostDemo) clientID() string { return "spiffe://cluster.local/ns/client-allow/sa/default" }

func (h *hostDemo) dashboard() string { return dashboardURL(defaultDashboard) }

func (h *hostDemo) keepHint() string {
	return "`trellis dashboard`, `trellis graph`, `trellis get pods -A`; stop it with `trellis down`"
}

func (h *hostDemo) curl() bool {
	_, err := exec.LookPath("curl")
	return err == nil
}

func (h *hostDemo) graph(ctx context.Context, window time.Duration, namespaces []string) (*servicegraph.Graph, error) {
	return fetchGraph(ctx, defaultDashboard, window, namespaces)
}

func (h *hostDemo) down(ctx context.Context) error {
	return runDown(ctx, &options{stateDir: h.stateDir, out: io.Discard, err: h.err})
}

func (h *hostDemo) up(ctx context.Context, r *demoRun) error {
	r.say("start the mesh: namespace db (injected) with demo-graph-alpha (v1 and v2) and demo-graph-zero; client-allow (injected, its calls to alpha routed to v2); client-deny (not injected)")
	dir := filepath.Join(h.stateDir, "demo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, demo.Mesh, 0o600); err != nil {
		return err
	}
	u := &upOptions{options: &options{stateDir: h.stateDir, out: io.Discard, err: io.Discard}, files: []string{mesh},
		podCIDR: localmesh.DefaultPodCIDR.String(), serviceCIDR: localmesh.DefaultServiceCIDR.String(), svidTTL: 24 * time.Hour}
	if _, _, err := u.prepare(); err != nil {
		return err
	}
	if err := u.startDetached(ctx); err != nil {
		return err
	}
	pods, err := h.waitReady(ctx, demoPods, time.Minute)
	if err != nil {
		return err
	}
	if err := h.waitRouted(ctx, pods, 30*time.Second); err != nil {
		return err
	}
	var names []string
	for _, p := range pods {
		names = append(names, fmt.Sprintf("%s/%s %s", p.Namespace, p.Name, readyCount(p)))
	}
	r.say("mesh up: %s", strings.Join(names, ", "))
	return nil
}

func readyCount(p localmesh.PodStatus) string {
	n := 0
	for _, c := range p.Containers {
		if c.Ready {
			n++
		}
	}
	return fmt.Sprintf("%d/%d", n, len(p.Containers))
}

// waitReady waits until want pods are ready.
func (h *hostDemo) waitReady(ctx context.Context, want int, limit time.Duration) ([]localmesh.PodStatus, error) {
	deadline := time.Now().Add(limit)
	for {
		pods, err := h.client().Pods(ctx)
		ready := 0
		for _, p := range pods {
			if p.Ready {
				ready++
			}
		}
		if err == nil && ready == want && len(pods) == want {
			return pods, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d demo pods ready after %s (see `trellis get pods -A` and `trellis logs`): %v", ready, want, limit, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitRouted waits until each client of the database has its endpoints:
// the client-allow pod's sidecar alpha's, alpha's sidecar zero's, read
// from the sidecars' own config.
func (h *hostDemo) waitRouted(ctx context.Context, pods []localmesh.PodStatus, limit time.Duration) error {
	need := map[string]string{"client-allow/": "db/demo-graph-alpha-v2", "db/demo-graph-alpha-v2-": "db/demo-graph-zero"}
	deadline := time.Now().Add(limit)
	for prefix, svc := range need {
		var netns string
		for _, p := range pods {
			if strings.HasPrefix(p.Namespace+"/"+p.Name, prefix) {
				netns = p.Netns
			}
		}
		for !sidecarRoutes(netns, svc) {
			if time.Now().After(deadline) {
				return fmt.Errorf("the sidecar of %s has no endpoints of %s after %s (see `trellis proxy-status` and `trellis proxy-config`)", prefix, svc, limit)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// sidecarRoutes says whether the sidecar in netns has an endpoint on
// every port of service ns/name.
func sidecarRoutes(netns, service string) bool {
	return configRoutes(func(path string) ([]byte, error) { return adminGet(netns, path) }, service)
}

// configRoutes says whether the sidecar whose admin API get reads has an
// endpoint on every port of service ns/name.
func configRoutes(get func(path string) ([]byte, error), service string) bool {
	data, err := get("/config_dump")
	cfg := &meshpb.ProxyConfig{}
	if err != nil || protojson.Unmarshal(data, cfg) != nil {
		return false
	}
	for _, s := range cfg.GetServices() {
		if s.GetNamespace()+"/"+s.GetName() != service {
			continue
		}
		for _, p := range s.GetPorts() {
			if len(p.GetEndpoints()) == 0 {
				return false
			}
		}
		return len(s.GetPorts()) > 0
	}
	return false
}

func (h *hostDemo) exec(ctx context.Context, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout+h.traffic+10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, h.exe, append([]string{"exec", "--state-dir", h.stateDir, "-n", ns, "client", "--"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), commandError(stderr.String(), err)
	}
	return stdout.String(), nil
}

// commandError is a failed command's error: what it printed, or how it
// ended when it printed nothing.
func commandError(stderr string, err error) error {
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		msg = err.Error()
	}
	return errors.New(strings.TrimPrefix(msg, "error: "))
}

func (h *hostDemo) enforce(ctx context.Context) error {
	before, _ := nodeAgentRules()
	if _, err := h.client().Apply(ctx, []manifest.Source{{Name: "policy.yaml", Data: demo.Policy}}); err != nil {
		return fmt.Errorf("apply the policy: %w", err)
	}
	// The node agent reports its rule count once the kernel has the rules.
	return waitRulesChange(ctx, before, func(context.Context) (float64, error) { return nodeAgentRules() },
		"see `trellis get networkpolicies -A` and the mesh log")
}

func (h *hostDemo) authorize(ctx context.Context) error {
	if _, err := h.client().Apply(ctx, []manifest.Source{{Name: "authz.yaml", Data: demo.Authz}}); err != nil {
		return fmt.Errorf("apply the AuthorizationPolicy: %w", err)
	}
	return nil
}

// waitRulesChange waits up to 10 s for a node agent's rule count (read by
// rules) to differ from before: the policy is in the kernel.
func waitRulesChange(ctx context.Context, before float64, rules func(context.Context) (float64, error), hint string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, err := rules(ctx); err == nil && n != before {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the node agent did not apply the policy within 10s; " + hint)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

const (
	alphaHTTP = "http://demo-graph-alpha.db.svc.cluster.local:8080"
	// demoPods: zero, alpha v1 and v2, the two clients.
	demoPods  = 5
	alphaGRPC = "demo-graph-alpha.db.svc.cluster.local:9080"
)

// call is one client's attempt at one port, as test 0-2 make them.
type call struct {
	label string
	args  []string
	// parse checks a successful answer and describes it.
	parse func(out string) (desc, client string, err error)
}

func (r *demoRun) calls() []call {
	t := r.timeout.String()
	cs := []call{
		{"HTTP GET /health", []string{"trellis", "example", "graph-client", "health", "--http", alphaHTTP, "--timeout", t},
			func(out string) (string, string, error) {
				var h graphdb.Health
				if err := json.Unmarshal([]byte(out), &h); err != nil || h.Status != "healthy" {
					return "", "", fmt.Errorf("unexpected answer %q", strings.TrimSpace(out))
				}
				return fmt.Sprintf("%s %s from %s", h.Status, h.Version, h.Instance), h.Client, nil
			}},
		{"gRPC CheckVersion", []string{"trellis", "example", "graph-client", "check-version", "--grpc", alphaGRPC, "--timeout", t},
			func(out string) (string, string, error) {
				var v graphpb.Version
				if err := json.Unmarshal([]byte(out), &v); err != nil || v.Tag == "" {
					return "", "", fmt.Errorf("unexpected answer %q", strings.TrimSpace(out))
				}
				return fmt.Sprintf("%s from %s", v.Tag, v.Instance), v.Client, nil
			}},
	}
	if r.mesh.curl() {
		cs = append(cs, call{"curl /health", []string{"curl", "-sS", "--fail", "-m", fmt.Sprintf("%.1f", r.timeout.Seconds()), alphaHTTP + "/health"},
			func(out string) (string, string, error) {
				var h graphdb.Health
				if err := json.Unmarshal([]byte(out), &h); err != nil {
					return "", "", fmt.Errorf("unexpected answer %q", strings.TrimSpace(out))
				}
				return "HTTP 200 " + h.Status, h.Client, nil
			}})
	}
	return cs
}

// attempt makes every call from namespace ns's client, expecting each to
// time out, or to succeed (and, with mtlsAs, to reach alpha as that
// identity).
func (r *demoRun) attempt(ctx context.Context, ns string, wantTimeout bool, mtlsAs string) {
	for _, c := range r.calls() {
		out, err := r.mesh.exec(ctx, ns, c.args...)
		what := fmt.Sprintf("%s → %s", ns, c.label)
		if wantTimeout {
			switch {
			case err == nil:
				r.check(what, false, "answered, want a timeout: "+strings.TrimSpace(out))
			case !isTimeout(err):
				r.check(what, false, "failed, but not by timing out: "+err.Error())
			default:
				r.check(what, true, "timed out: "+oneLine(err.Error()))
			}
			continue
		}
		if err != nil {
			r.check(what, false, oneLine(err.Error()))
			continue
		}
		desc, client, perr := c.parse(out)
		switch {
		case perr != nil:
			r.check(what, false, perr.Error())
		case mtlsAs != "" && client != mtlsAs:
			r.check(what, false, fmt.Sprintf("%s, but alpha's sidecar saw the caller as %q, want %s over mTLS", desc, client, mtlsAs))
		case mtlsAs != "":
			r.check(what, true, desc+"; mTLS, caller "+client)
		default:
			r.check(what, true, desc)
		}
	}
}

func isTimeout(err error) bool {
	s := err.Error()
	return strings.Contains(s, "deadline exceeded") || strings.Contains(s, "DeadlineExceeded") ||
		strings.Contains(s, "timed out") || strings.Contains(s, "Timeout was reached")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 140 {
		s = s[:140] + "…"
	}
	return s
}

func (r *demoRun) test0(ctx context.Context) {
	r.say("TEST 0  no policy: both clients reach HTTP /health and gRPC CheckVersion")
	r.attempt(ctx, "client-allow", false, "")
	r.attempt(ctx, "client-deny", false, "")
}

func (r *demoRun) test1(ctx context.Context) error {
	r.say("TEST 1  apply NetworkPolicy db/mesh-members-only: the client outside the mesh times out (after %s)", r.timeout)
	if err := r.mesh.enforce(ctx); err != nil {
		return err
	}
	r.attempt(ctx, "client-deny", true, "")
	return nil
}

func (r *demoRun) test2(ctx context.Context) {
	r.say("TEST 2  the client in the mesh still succeeds, through its sidecar, with mTLS")
	r.attempt(ctx, "client-allow", false, r.mesh.clientID())
}

func (r *demoRun) test3(ctx context.Context) error {
	r.say("TEST 3  client-allow's calls to alpha go to v2 only (VirtualService client-allow/alpha-v2), then traffic for %s: "+
		"health checks, CheckVersion, a Star Wars dataset loaded over gRPC, queries over HTTP", r.traffic)
	if err := r.routedToV2(ctx); err != nil {
		return err
	}
	out, err := r.mesh.exec(ctx, "client-allow", "trellis", "example", "graph-client", "traffic", "--http", alphaHTTP, "--grpc", alphaGRPC,
		"--rate", "10", "--duration", r.traffic.String(), "--timeout", r.timeout.String())
	var counts graphdb.Counts
	_ = json.Unmarshal([]byte(out), &counts)
	total := 0
	for _, n := range counts.OK {
		total += n
	}
	if err != nil {
		r.check("traffic from client-allow", false, oneLine(err.Error()))
	} else {
		r.check("traffic from client-allow", true, fmt.Sprintf("%d calls, none failed (%v)", total, counts.OK))
	}

	r.say("the service graph (the dashboard scrapes every sidecar every 5s)")
	want := []string{
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:http",
		"wl:client-allow/client>svc:db/demo-graph-alpha-v2:grpc",
		"wl:db/demo-graph-alpha-v2>svc:db/demo-graph-zero:grpc",
	}
	// client-deny's calls of test 1, dropped at whichever version's pod
	// the Service sent them to.
	deniedTo := func(edges map[string]*servicegraph.Edge) *servicegraph.Edge {
		for _, v := range []string{"v1", "v2"} {
			if e := edges["wl:client-deny/client>wl:db/demo-graph-alpha-"+v+":ip"]; e != nil && e.Requests > 0 {
				return e
			}
		}
		return nil
	}
	edges, err := r.waitGraph(ctx, 30*time.Second, func(edges map[string]*servicegraph.Edge) bool {
		for _, id := range want {
			if e := edges[id]; e == nil || e.Requests == 0 {
				return false
			}
		}
		return deniedTo(edges) != nil
	})
	if err != nil {
		return err
	}
	for _, id := range want {
		e := edges[id]
		switch {
		case e == nil:
			r.check("graph edge "+id, false, "missing")
		case e.MTLS < 1 || e.ErrorRate > 0:
			r.check("graph edge "+id, false, fmt.Sprintf("%.0f%% mTLS, %.1f%% errors; want all mTLS, no errors", 100*e.MTLS, 100*e.ErrorRate))
		default:
			r.check("graph edge "+id, true, fmt.Sprintf("%.1f rps, all mTLS, no errors", e.RPS))
		}
	}
	if e := deniedTo(edges); e == nil || !e.Denied {
		r.check("graph edge wl:client-deny/client>wl:db/demo-graph-alpha-…:ip", false, "missing: the node agent's denials of test 1 should show")
	} else {
		r.check("graph edge "+e.ID, true, fmt.Sprintf("denied, %.0f packets dropped by the policy", e.Requests))
	}
	// The route's split, as the dashboard draws it.
	for v, share := range map[string]float64{"v2": 1, "v1": 0} {
		id := "svc:db/demo-graph-alpha>svc:db/demo-graph-alpha-" + v + ":route"
		e := edges[id]
		switch {
		case e == nil || len(e.Routes) != 1:
			r.check("graph edge "+id, false, "missing: the split of VirtualService client-allow/alpha-v2 should show")
		case e.Routes[0].Share != share || e.Routes[0].Consumers != "client-allow":
			r.check("graph edge "+id, false, fmt.Sprintf("%s, want %.0f%% for client-allow", routeShares(e.Routes), 100*share))
		default:
			r.check("graph edge "+id, true, routeShares(e.Routes))
		}
	}
	return nil
}

// routedToV2 checks that client-allow's calls to alpha reach v2 only, as
// the VirtualService client-allow/alpha-v2 says: 5 CheckVersion calls in
// a row answered by a v2 pod (its sidecar may take a moment to learn the
// route).
func (r *demoRun) routedToV2(ctx context.Context) error {
	const n = 5
	args := []string{"trellis", "example", "graph-client", "check-version", "--grpc", alphaGRPC, "--timeout", r.timeout.String()}
	var answers []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		answers = answers[:0]
		for range n {
			out, err := r.mesh.exec(ctx, "client-allow", args...)
			var v graphpb.Version
			if err == nil && json.Unmarshal([]byte(out), &v) == nil {
				answers = append(answers, v.Instance)
			} else {
				answers = append(answers, "error: "+oneLine(fmt.Sprint(err)))
			}
		}
		v2 := 0
		for _, a := range answers {
			if strings.HasPrefix(a, "demo-graph-alpha-v2-") {
				v2++
			}
		}
		if v2 == n {
			r.check("client-allow → alpha, routed", true, fmt.Sprintf("%d of %d CheckVersion calls answered by v2 (%s)", v2, n, answers[0]))
			return nil
		}
		if time.Now().After(deadline) {
			r.check("client-allow → alpha, routed", false, fmt.Sprintf("%d of %d CheckVersion calls answered by v2 after 30s: %s", v2, n, strings.Join(answers, ", ")))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// test4 restricts the mesh from within: the AuthorizationPolicy
// db/alpha-readers lets client-allow's identity check alpha's health and
// version, and nothing else; its query is refused by alpha's sidecar.
func (r *demoRun) test4(ctx context.Context) error {
	r.say("TEST 4  apply AuthorizationPolicy db/alpha-readers: inside the mesh, client-allow may only check alpha's health and version")
	if err := r.mesh.authorize(ctx); err != nil {
		return err
	}
	query := []string{"trellis", "example", "graph-client", "query", "--type", "Film", "--http", alphaHTTP, "--timeout", r.timeout.String()}
	var out string
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; {
		if out, err = r.mesh.exec(ctx, "client-allow", query...); err != nil && strings.Contains(err.Error(), "RBAC: access denied") {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err == nil || !strings.Contains(err.Error(), "403") {
		r.check("client-allow → HTTP POST /query", false, fmt.Sprintf("want 403 RBAC: access denied within 15s, got %q, %v", oneLine(out), err))
	} else {
		r.check("client-allow → HTTP POST /query", true, "refused by alpha's sidecar: "+oneLine(err.Error()))
	}
	for _, c := range r.calls()[:2] {
		out, err := r.mesh.exec(ctx, "client-allow", c.args...)
		if err != nil {
			r.check("client-allow → "+c.label, false, oneLine(err.Error()))
			continue
		}
		desc, _, perr := c.parse(out)
		if perr != nil {
			r.check("client-allow → "+c.label, false, perr.Error())
			continue
		}
		r.check("client-allow → "+c.label, true, desc+"; allowed by db/alpha-readers")
	}
	return nil
}

// waitGraph polls the dashboard's graph until done says it has what it
// needs, or limit passes, and returns its edges by ID.
func (r *demoRun) waitGraph(ctx context.Context, limit time.Duration, done func(map[string]*servicegraph.Edge) bool) (map[string]*servicegraph.Edge, error) {
	deadline := time.Now().Add(limit)
	for {
		g, err := r.mesh.graph(ctx, time.Minute, []string{"db", "client-allow", "client-deny"})
		if err == nil {
			edges := map[string]*servicegraph.Edge{}
			for _, e := range g.Edges {
				edges[e.ID] = e
			}
			if done(edges) || time.Now().After(deadline) {
				return edges, printGraph(r.out, g)
			}
		} else if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// nodeAgentRules reads the node agent's trellis_netpol_rules gauge: the
// rules in the kernel after its last apply.
func nodeAgentRules() (float64, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:15090/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, err
	}
	return rulesGauge(body)
}

// rulesGauge reads trellis_netpol_rules from a node agent's metrics.
func rulesGauge(metrics []byte) (float64, error) { return metricValue(metrics, "trellis_netpol_rules") }

// metricValue reads the sample of an unlabelled series from metrics in the
// text format.
func metricValue(metrics []byte, name string) (float64, error) {
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("node agent metrics: no " + name)
}
