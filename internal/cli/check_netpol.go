package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trellis-mesh/trellis/internal/install"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/netpolicy/truthtable"
)

// netpolCheck runs the NetworkPolicy truth tables on a cluster: the model's
// namespaces and pods made through the API, each step applied there, every
// probe run in the pods through the API server as kubectl exec does. It
// checks whatever enforces NetworkPolicy on the cluster: Trellis's node
// agents or another engine.
type netpolCheck struct {
	out        io.Writer
	kc         *kubeclient.Clients
	applier    *kube.Applier
	namespace  string // where Trellis is installed
	image      string
	timeout    time.Duration
	attempts   int
	ips        map[string]string    // "x/a" -> pod IP
	created    map[string]types.UID // the namespaces this run made
	agents     []string             // node agents on the model's nodes
	baseline   float64              // their rules before any policy of the check
	mismatched int
	// unconfirmed is set when the node agents did not confirm the last
	// change (or there are none): a table then counts only when two
	// probe rounds in a row match it.
	unconfirmed bool
}

// netpolPart labels what the check creates.
const netpolPart = "trellis-check-network-policies"

func newCheckNetpolCmd(o *options) *cobra.Command {
	var cluster kubeclient.Target
	var image, run string
	var keep bool
	c := &netpolCheck{out: o.out}
	cmd := &cobra.Command{
		Use:   "network-policies [--image IMAGE] [--run REGEXP] [--keep]",
		Short: "Run the upstream NetworkPolicy truth tables on the cluster: namespaces x, y, z with pods a, b, c, every pair probed on TCP and UDP 80 and 81 after each policy",
		Long: `Runs the Kubernetes NetworkPolicy conformance truth tables (the upstream
network-policy e2e suite's model) against the cluster of the kubeconfig: it
creates namespaces x, y and z with pods a, b and c serving TCP and UDP on
ports 80 and 81, applies each scenario's policies and label changes, probes
every ordered pair of pods on every port from inside the pods, and compares
with what the NetworkPolicy API says must pass. It checks whatever enforces
policy on the cluster (Trellis's node agent, or another engine), then
deletes the namespaces unless --keep. Exit status 1 names the scenarios
that did not match.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := regexp.Compile(run)
			if err != nil {
				return fmt.Errorf("--run %q: %w", run, err)
			}
			if !slices.ContainsFunc(truthtable.Scenarios(), func(sc truthtable.Scenario) bool { return filter.MatchString(sc.Name) }) {
				return fmt.Errorf("--run %q matches no scenario (see `trellis check network-policies` without it for their names)", run)
			}
			if c.attempts < 1 {
				return fmt.Errorf("--attempts %d: give at least 1", c.attempts)
			}
			// Ctrl-C stops the run and still cleans up; a second one kills.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			context.AfterFunc(ctx, stop)
			kc, err := kubeclient.Connect(cluster, "trellis-check")
			if err != nil {
				return err
			}
			c.kc = kc
			if c.applier, err = kube.NewApplier(kc.Config); err != nil {
				return err
			}
			c.image = image
			if c.image == "" {
				_, demo, err := installedControlPlane(ctx, kc, c.namespace)
				if err != nil || demo == "" {
					return fmt.Errorf("cannot tell the trellis-demo image from Trellis's install (%v): give it with --image", err)
				}
				c.image = demo
			}
			return c.run(ctx, filter, keep)
		},
	}
	targetFlags(cmd, &cluster, "")
	cmd.Flags().StringVar(&c.namespace, "trellis-namespace", "trellis-system", "the namespace Trellis is installed in")
	cmd.Flags().StringVar(&image, "image", "", "the image of the model's pods, holding the trellis CLI (default: trellis-demo beside the installed control plane's image)")
	cmd.Flags().StringVar(&run, "run", "", "run only the scenarios whose names match this regular expression")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave namespaces x, y and z and their pods in place")
	cmd.Flags().DurationVar(&c.timeout, "timeout", time.Second, "how long a probe waits for an answer")
	cmd.Flags().IntVar(&c.attempts, "attempts", 6, "probe rounds, a second apart, before a table counts as not matching (enforcement is asynchronous)")
	return cmd
}

func (c *netpolCheck) run(ctx context.Context, filter *regexp.Regexp, keep bool) (err error) {
	for _, ns := range truthtable.Namespaces {
		_, err := c.kc.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err == nil {
			return fmt.Errorf("namespace %s already exists; the check creates namespaces %s and deletes them afterwards: "+
				"delete them first (kubectl delete namespace %s) or use another cluster", ns, strings.Join(truthtable.Namespaces, ", "), strings.Join(truthtable.Namespaces, " "))
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	fmt.Fprintf(c.out, "NetworkPolicy truth tables on the cluster at %s: namespaces %s, pods %s (image %s)\n",
		c.kc.Config.Host, strings.Join(truthtable.Namespaces, ", "), strings.Join(truthtable.Pods, ", "), c.image)
	defer func() {
		if keep {
			fmt.Fprintf(c.out, "kept namespaces %s; remove them with `kubectl delete namespace %s`\n",
				strings.Join(truthtable.Namespaces, ", "), strings.Join(truthtable.Namespaces, " "))
			return
		}
		// Clean up even when ctx was cancelled (Ctrl-C).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		err = errors.Join(err, c.down(dctx))
	}()
	if err := c.up(ctx); err != nil {
		return err
	}
	total, matched, scenarios := 0, 0, 0
	check := func(name string, want truthtable.Expectation) error {
		m, t, err := c.check(ctx, name, want)
		matched, total = matched+m, total+t
		return err
	}
	if err := check("no policy", truthtable.AllowAll); err != nil {
		return err
	}
	for _, sc := range truthtable.Scenarios() {
		if !filter.MatchString(sc.Name) {
			continue
		}
		scenarios++
		for i, step := range sc.Steps {
			if err := c.step(ctx, step); err != nil {
				return fmt.Errorf("%s, step %d: %w", sc.Name, i+1, err)
			}
			name := sc.Name
			if len(sc.Steps) > 1 {
				name += fmt.Sprintf(", step %d", i+1)
			}
			if err := check(name, step.Want); err != nil {
				return err
			}
		}
		if err := c.deletePolicies(ctx); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.out, "network policy conformance: %d/%d cases match over %d scenarios and the no-policy table\n", matched, total, scenarios)
	if c.mismatched > 0 {
		return fmt.Errorf("%d table(s) did not match (marked × above): %w", c.mismatched, exitCode(1))
	}
	return nil
}

// up creates the model and waits for its pods, then notes the node agents
// that enforce policy for them.
func (c *netpolCheck) up(ctx context.Context) error {
	c.created = map[string]types.UID{}
	for _, ns := range truthtable.Namespaces {
		made, err := c.kc.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"ns": ns, install.PartOf: netpolPart}}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
		c.created[ns] = made.UID
	}
	for _, key := range truthtable.Keys() {
		pod := c.pod(truthtable.NsOf(key), truthtable.PodOf(key))
		// A fresh namespace's default service account comes a moment
		// after the namespace; pods are refused until it does.
		for deadline := time.Now().Add(30 * time.Second); ; {
			_, err := c.kc.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
				return fmt.Errorf("create pod %s: %w", key, err)
			}
			if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
				return err
			}
		}
	}
	nodes, err := c.waitPods(ctx, 3*time.Minute)
	if err != nil {
		return err
	}
	for _, node := range nodes {
		agents, err := c.kc.Client.CoreV1().Pods(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + kube.NodeAgent,
			FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return err
		}
		if len(agents.Items) == 0 {
			fmt.Fprintf(c.out, "‼ no Trellis node agent runs on node %s: the tables check whatever else enforces NetworkPolicy there\n", node)
		}
		for _, a := range agents.Items {
			c.agents = append(c.agents, a.Name)
		}
	}
	if len(c.agents) > 0 {
		var err error
		if c.baseline, err = c.agentSum(ctx, "trellis_netpol_rules"); err != nil {
			return fmt.Errorf("the node agents' metrics: %w", err)
		}
	}
	return nil
}

// pod is one pod of the model: the trellis CLI answering on TCP and UDP 80
// and 81, as a non-root user allowed to bind them.
func (c *netpolCheck) pod(ns, name string) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, p := range truthtable.Ports {
		proto := corev1.ProtocolTCP
		if p.Proto == "udp" {
			proto = corev1.ProtocolUDP
		}
		ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", p.Number, p.Proto), ContainerPort: int32(p.Number), Protocol: proto})
	}
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"pod": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			SecurityContext:               &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}},
			Containers: []corev1.Container{{
				Name: "server", Image: c.image, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"trellis", "example", "ports-server", "--port", "80,81"},
				Env:     []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Ports:   ports,
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}},
					PeriodSeconds: 1},
			}},
		},
	}
}

// waitPods waits until the model's pods are ready and returns the nodes
// they run on.
func (c *netpolCheck) waitPods(ctx context.Context, limit time.Duration) ([]string, error) {
	deadline := time.Now().Add(limit)
	for {
		ips, nodes := map[string]string{}, map[string]bool{}
		var waiting []string
		for _, ns := range truthtable.Namespaces {
			pods, err := c.kc.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err
			}
			for _, p := range pods.Items {
				ready, total, reason := podReadiness(&p)
				if cannotPull(reason) {
					return nil, fmt.Errorf("pod %s/%s cannot have its image %s (%s): build it with `trellis images build` "+
						"(--load-into-k8sbed on the test bed, --push REGISTRY elsewhere) and give it with --image", ns, p.Name, c.image, reason)
				}
				if ready == total && p.Status.PodIP != "" {
					ips[ns+"/"+p.Name] = p.Status.PodIP
					nodes[p.Spec.NodeName] = true
				} else {
					waiting = append(waiting, fmt.Sprintf("%s/%s %s", ns, p.Name, reason))
				}
			}
		}
		if len(ips) == len(truthtable.Keys()) {
			c.ips = ips
			return slices.Sorted(maps.Keys(nodes)), nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d pods ready after %s (waiting: %s; see kubectl describe pods -n x)", len(ips), len(truthtable.Keys()), limit, strings.Join(waiting, ", "))
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return nil, err
		}
	}
}

// step applies one step's changes and waits (a while) for the node
// agents to apply a new state after them.
func (c *netpolCheck) step(ctx context.Context, step truthtable.Step) error {
	const applies = "trellis_netpol_apply_seconds_count"
	before, unread := c.agentSum(ctx, applies)
	if err := c.change(ctx, step); err != nil {
		return err
	}
	c.unconfirmed = unread != nil || !c.waitAgents(ctx, func(ctx context.Context) bool {
		n, err := c.agentSum(ctx, applies)
		return err == nil && n > before
	})
	return nil
}

func (c *netpolCheck) change(ctx context.Context, step truthtable.Step) error {
	if step.DeleteAll {
		if err := c.deletePolicies(ctx); err != nil {
			return err
		}
	}
	if step.Policies != nil {
		objs, err := decodeObjects([]byte(step.Policies(c.ips)))
		if err != nil {
			return err
		}
		for _, u := range objs {
			if err := c.applier.Apply(ctx, u); err != nil {
				return fmt.Errorf("apply NetworkPolicy %s/%s: %w", u.GetNamespace(), u.GetName(), err)
			}
		}
	}
	if l := step.Label; l != nil {
		return onConflict(func() error {
			if l.Pod == "" {
				ns, err := c.kc.Client.CoreV1().Namespaces().Get(ctx, l.Namespace, metav1.GetOptions{})
				if err != nil {
					return err
				}
				labels := maps.Clone(l.Labels)
				labels["kubernetes.io/metadata.name"], labels[install.PartOf] = l.Namespace, netpolPart
				ns.Labels = labels
				_, err = c.kc.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
				return err
			}
			pod, err := c.kc.Client.CoreV1().Pods(l.Namespace).Get(ctx, l.Pod, metav1.GetOptions{})
			if err != nil {
				return err
			}
			pod.Labels = maps.Clone(l.Labels)
			_, err = c.kc.Client.CoreV1().Pods(l.Namespace).Update(ctx, pod, metav1.UpdateOptions{})
			return err
		})
	}
	return nil
}

// onConflict runs update again, up to 5 times, while the object changed
// under it.
func onConflict(update func() error) error {
	for range 4 {
		if err := update(); !apierrors.IsConflict(err) {
			return err
		}
	}
	return update()
}

// deletePolicies deletes every policy of the model's namespaces and waits
// (a while, not forever: other policies of the cluster may change too) for
// the node agents to be back at their rules from before the check.
func (c *netpolCheck) deletePolicies(ctx context.Context) error {
	for _, ns := range truthtable.Namespaces {
		if err := c.kc.Client.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			return fmt.Errorf("delete the policies of namespace %s: %w", ns, err)
		}
	}
	c.unconfirmed = !c.waitAgents(ctx, func(ctx context.Context) bool {
		n, err := c.agentSum(ctx, "trellis_netpol_rules")
		return err == nil && n == c.baseline
	})
	return nil
}

// waitAgents polls done for up to 10 s and says whether it came true;
// false at once when no node agent runs on the model's nodes.
func (c *netpolCheck) waitAgents(ctx context.Context, done func(context.Context) bool) bool {
	if len(c.agents) == 0 {
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if done(ctx) {
			return true
		}
		if sleepCtx(ctx, 50*time.Millisecond) != nil {
			return false
		}
	}
	return false
}

// agentSum sums an unlabelled series over the node agents of the model's
// nodes, read through the API server's pod proxy.
func (c *netpolCheck) agentSum(ctx context.Context, series string) (float64, error) {
	sum := 0.0
	for _, agent := range c.agents {
		body, err := agentMetrics(ctx, c.kc, c.namespace, agent)
		if err != nil {
			return 0, err
		}
		n, err := metricValue(body, series)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// check probes until the table matches want or the attempts run out, and
// prints the result. Only a failure to probe at all is an error.
func (c *netpolCheck) check(ctx context.Context, name string, want truthtable.Expectation) (matched, total int, err error) {
	var mismatches []string
	needed, streak := 1, 0
	if c.unconfirmed {
		needed = 2
	}
	for attempt := range c.attempts + needed - 1 {
		if attempt > 0 {
			if err := sleepCtx(ctx, time.Second); err != nil {
				return 0, 0, err
			}
		}
		got, err := c.reachability(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		matched, total, mismatches = truthtable.Compare(got, want)
		if len(mismatches) > 0 {
			streak = 0
			continue
		}
		if streak++; streak == needed {
			fmt.Fprintf(c.out, "√ %s (%d/%d)\n", name, matched, total)
			return matched, total, nil
		}
	}
	c.mismatched++
	fmt.Fprintf(c.out, "× %s: %d/%d cases match; mismatches:\n    %s\n", name, matched, total,
		strings.ReplaceAll(truthtable.Summarize(mismatches), "\n", "\n    "))
	return matched, total, nil
}

// reachability probes from every pod of the model at once.
func (c *netpolCheck) reachability(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, from := range truthtable.Keys() {
		targets, cases := truthtable.Targets(from, c.ips)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ectx, cancel := context.WithTimeout(ctx, c.timeout+30*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append([]string{"trellis", "example", "probe", "--timeout", c.timeout.String()}, targets...)
			err := kube.Exec(ectx, c.kc, truthtable.NsOf(from), truthtable.PodOf(from), "server", args, &stdout, &stderr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("probe from %s: %w", from, commandError(stderr.String(), err)))
				return
			}
			answered := 0
			for line := range strings.SplitSeq(strings.TrimSpace(stdout.String()), "\n") {
				target, result, _ := strings.Cut(line, " ")
				if key, ok := cases[target]; ok && (result == "ok" || result == "fail") {
					out[key] = result == "ok"
					answered++
				}
			}
			if answered != len(targets) {
				errs = append(errs, fmt.Errorf("probe from %s: %d of %d targets reported", from, answered, len(targets)))
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// down deletes the namespaces this run created (the same objects, by UID:
// never one someone else made under the name meanwhile) and waits until
// they are gone.
func (c *netpolCheck) down(ctx context.Context) error {
	var errs []error
	for ns, uid := range c.created {
		err := c.kc.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", ns, err))
		}
	}
	for ns := range c.created {
		for {
			got, err := c.kc.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || (err == nil && got.UID != c.created[ns]) {
				break
			}
			if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
				errs = append(errs, fmt.Errorf("namespace %s still there: %w", ns, err))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// sleepCtx waits d, or less when ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
