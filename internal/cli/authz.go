package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy"
)

// newAuthzCmd groups the authorization tools that work from what the
// sidecars observed: suggest writes least-privilege policies from it,
// check replays it against proposed ones.
func newAuthzCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "authz", Short: "Write and check AuthorizationPolicies from the traffic the sidecars let in"}
	cmd.AddCommand(newAuthzSuggestCmd(o), newAuthzCheckCmd(o))
	return cmd
}

// observedFlags select what was observed: where and how recently.
type observedFlags struct {
	namespace string
	window    time.Duration
	cluster   clusterFlags
}

func (f *observedFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", "only the workloads of this namespace (default: every namespace)")
	cmd.Flags().DurationVar(&f.window, "window", time.Hour, "only what was seen this recently")
	f.cluster.register(cmd)
}

// workloadAccess is what one workload's sidecars let in.
type workloadAccess struct {
	config *meshpb.ProxyConfig // one replica's: workload, labels, policies
	access []proxy.ObservedAccess
}

// observed reads, from every meshed pod (of f.namespace), its config and
// what its sidecar let in during the window, merged per workload.
func (f *observedFlags) observed(ctx context.Context, o *options) (map[string]*workloadAccess, []localmesh.PodStatus, error) {
	if f.window <= 0 {
		return nil, nil, fmt.Errorf("--window %s: give a positive duration such as 1h", f.window)
	}
	sc, err := newSidecars(o, &f.cluster)
	if err != nil {
		return nil, nil, err
	}
	pods, err := sc.pods.Pods(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]*workloadAccess{}
	for _, p := range pods {
		if (f.namespace != "" && p.Namespace != f.namespace) || !slices.ContainsFunc(p.Containers, func(c localmesh.ContainerStatus) bool {
			return c.Name == kube.SidecarContainer
		}) {
			continue
		}
		cfg, err := sc.config(ctx, p.Namespace, p.Name)
		if err != nil {
			fmt.Fprintf(terminalSafe(o.err), "pod %s/%s: %v (left out)\n", p.Namespace, p.Name, err)
			continue
		}
		data, err := sc.admin(ctx, p.Namespace, p.Name, "/authz/observed?window="+f.window.String())
		var seen struct {
			Access   []proxy.ObservedAccess
			Overflow int64
		}
		if err == nil {
			err = json.Unmarshal(data, &seen)
		}
		if err != nil {
			fmt.Fprintf(terminalSafe(o.err), "pod %s/%s: what its sidecar observed: %v (left out)\n", p.Namespace, p.Name, err)
			continue
		}
		if seen.Overflow > 0 {
			fmt.Fprintf(terminalSafe(o.err), "pod %s/%s: its sidecar saw more kinds of request than it keeps (%d not kept)\n", p.Namespace, p.Name, seen.Overflow)
		}
		key := cfg.GetWorkload().GetNamespace() + "/" + cfg.GetWorkload().GetName()
		w := out[key]
		if w == nil {
			w = &workloadAccess{config: cfg}
			out[key] = w
		}
		w.access = mergeAccess(w.access, seen.Access)
	}
	return out, pods, nil
}

// mergeAccess adds b's counts to a's, kind by kind.
func mergeAccess(a, b []proxy.ObservedAccess) []proxy.ObservedAccess {
	for _, x := range b {
		i := slices.IndexFunc(a, func(y proxy.ObservedAccess) bool {
			return y.Principal == x.Principal && y.Port == x.Port && y.Method == x.Method && y.Path == x.Path
		})
		if i < 0 {
			a = append(a, x)
			continue
		}
		a[i].Count += x.Count
		if x.Last.After(a[i].Last) {
			a[i].Last = x.Last
		}
	}
	return a
}

func newAuthzSuggestCmd(o *options) *cobra.Command {
	var f observedFlags
	cmd := &cobra.Command{
		Use:   "suggest [-n NAMESPACE] [--window D] [--kubernetes]",
		Short: "Write least-privilege ALLOW policies (YAML) from the traffic each workload's sidecars let in",
		Long: `Write one ALLOW AuthorizationPolicy per workload that received traffic, allowing
exactly what its sidecars let in during the window: each caller's identity, with
the ports, methods and paths it used (TCP connections by port). Plaintext callers
from outside the mesh appear as notPrincipals: ["*"].

The policies carry istio.io/dry-run: "true": apply them, watch
trellis_authz_decisions_total{result="dry_run_denied"} (or run trellis authz check),
then remove the annotation to enforce them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seen, _, err := f.observed(cmd.Context(), o)
			if err != nil {
				return err
			}
			return writeSuggestions(o.out, seen, f.window)
		},
	}
	f.register(cmd)
	return cmd
}

// writeSuggestions prints the policies as YAML documents.
func writeSuggestions(w io.Writer, seen map[string]*workloadAccess, window time.Duration) error {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range seen {
			if !yield(k) {
				return
			}
		}
	})
	fmt.Fprintf(w, "# Suggested by trellis authz suggest from the traffic of the last %s, in dry run:\n"+
		"# apply, check trellis_authz_decisions_total{result=\"dry_run_denied\"}, then remove the annotation.\n", window)
	n := 0
	for _, k := range keys {
		wa := seen[k]
		if len(wa.access) == 0 {
			continue
		}
		doc, notes, err := suggestion(wa)
		if err != nil {
			fmt.Fprintf(w, "# %s: %v\n", k, err)
			continue
		}
		for _, n := range notes {
			fmt.Fprintf(w, "# %s: %s\n", k, n)
		}
		data, err := yaml.Marshal(doc)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "---\n%s", data)
		n++
	}
	if n == 0 {
		fmt.Fprintln(w, "# no traffic observed in the window")
	}
	return nil
}

// maxSuggestedPaths: past this many paths for one caller, port and
// method, paths are suggested by their first segment.
const maxSuggestedPaths = 16

// suggestion is the ALLOW policy of one workload's observed access, and
// notes on what it leaves out.
func suggestion(wa *workloadAccess) (map[string]any, []string, error) {
	wl := wa.config.GetWorkload()
	sel := map[string]string{}
	if app, ok := wl.GetLabels()["app"]; ok {
		sel["app"] = app
	} else {
		for k, v := range wl.GetLabels() {
			if k != "pod-template-hash" {
				sel[k] = v
			}
		}
	}
	if len(sel) == 0 {
		return nil, nil, fmt.Errorf("its pods have no labels to select them by: add an app label")
	}
	type opKey struct {
		port   uint16
		method string
	}
	byCaller := map[string]map[opKey][]string{}
	for _, a := range wa.access {
		ops := byCaller[a.Principal]
		if ops == nil {
			ops = map[opKey][]string{}
			byCaller[a.Principal] = ops
		}
		k := opKey{a.Port, a.Method}
		if !slices.Contains(ops[k], a.Path) {
			ops[k] = append(ops[k], a.Path)
		}
	}
	var rules []catalog.AuthorizationRule
	var notes []string
	for _, principal := range slices.Sorted(mapKeys(byCaller)) {
		src := catalog.AuthorizationSource{Principals: []string{principal}}
		if principal == "" {
			src = catalog.AuthorizationSource{NotPrincipals: []string{"*"}}
		}
		rule := catalog.AuthorizationRule{From: []catalog.AuthorizationFrom{{Source: src}}}
		ops := byCaller[principal]
		keys := slices.SortedFunc(mapKeys(ops), func(a, b opKey) int {
			return cmp.Or(cmp.Compare(a.port, b.port), strings.Compare(a.method, b.method))
		})
		for _, k := range keys {
			op := catalog.AuthorizationOperation{Ports: []string{strconv.Itoa(int(k.port))}}
			if k.method != "" {
				op.Methods = []string{k.method}
				var more bool
				if op.Paths, more = suggestedPaths(ops[k]); more {
					notes = append(notes, fmt.Sprintf("%s used more distinct paths with %s on port %d than its sidecar keeps: only those kept are allowed",
						cmp.Or(principal, "a caller from outside the mesh"), k.method, k.port))
				}
				if len(op.Paths) == 0 {
					continue
				}
			}
			rule.To = append(rule.To, catalog.AuthorizationTo{Operation: op})
		}
		if len(rule.To) == 0 {
			continue
		}
		rules = append(rules, rule)
	}
	if len(rules) == 0 {
		return nil, notes, fmt.Errorf("nothing it let in can be written as an ALLOW rule")
	}
	spec := catalog.AuthorizationSpec{Selector: &catalog.WorkloadSelector{MatchLabels: sel}, Action: catalog.AuthorizationAllow, Rules: rules}
	return map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": wl.GetName() + "-observed", "namespace": wl.GetNamespace(),
			"annotations": map[string]string{"istio.io/dry-run": "true"}},
		"spec": spec,
	}, notes, nil
}

// suggestedPaths are the paths to allow: as seen, or, when there are
// many, their first segments as prefixes. The sidecar's "*" (more paths
// than it keeps) never widens to any path: a caller could spray paths to
// be allowed them all; more reports that it was there.
func suggestedPaths(paths []string) (out []string, more bool) {
	if i := slices.Index(paths, "*"); i >= 0 {
		paths, more = slices.Delete(slices.Clone(paths), i, i+1), true
	}
	if len(paths) <= maxSuggestedPaths {
		slices.Sort(paths)
		return paths, more
	}
	for _, p := range paths {
		seg, _, more := strings.Cut(strings.TrimPrefix(p, "/"), "/")
		prefix := "/" + seg
		if more {
			prefix += "/*"
		}
		if !slices.Contains(out, prefix) {
			out = append(out, prefix)
		}
	}
	slices.Sort(out)
	return out, more
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func newAuthzCheckCmd(o *options) *cobra.Command {
	var f observedFlags
	var file string
	cmd := &cobra.Command{
		Use:   "check -f FILE [-n NAMESPACE] [--window D] [--kubernetes]",
		Short: "Replay the traffic the sidecars let in against proposed AuthorizationPolicies and list what they would deny",
		Long: `Replay what each workload's sidecars let in during the window against the
AuthorizationPolicies in FILE, as if they were applied (over the policies in
force; a policy of the same namespace and name replaces the one in force), and list
every kind of request they would deny. Exit status 1 when any would be.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			set, err := manifest.Parse([]manifest.Source{{Name: file, Data: data}})
			if err != nil {
				return err
			}
			var proposed []authz.Policy
			for _, p := range set.AuthorizationPolicies() {
				proposed = append(proposed, authz.FromCatalog(p))
			}
			if len(proposed) == 0 {
				return fmt.Errorf("%s holds no AuthorizationPolicy", file)
			}
			seen, pods, err := f.observed(cmd.Context(), o)
			if err != nil {
				return err
			}
			services, err := servicesOf(cmd.Context(), o, &f.cluster)
			if err != nil {
				return err
			}
			denied, err := replay(o.out, seen, pods, services, proposed)
			if err != nil {
				return err
			}
			if denied > 0 {
				return fmt.Errorf("%d kinds of observed request would be denied", denied)
			}
			fmt.Fprintln(o.out, "nothing observed would be denied")
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the proposed AuthorizationPolicies (YAML)")
	_ = cmd.MarkFlagRequired("filename")
	f.register(cmd)
	return cmd
}

func servicesOf(ctx context.Context, o *options, cluster *clusterFlags) ([]localmesh.ServiceStatus, error) {
	if !cluster.kubernetes {
		return o.client().Services(ctx)
	}
	kc, err := cluster.connect()
	if err != nil {
		return nil, err
	}
	return (&clusterLister{kc: kc, trellisNS: cluster.namespace, warn: io.Discard}).Services(ctx)
}

// replay decides every observed kind of request with the policies in
// force amended by proposed, prints those denied, and counts them.
func replay(w io.Writer, seen map[string]*workloadAccess, pods []localmesh.PodStatus, services []localmesh.ServiceStatus, proposed []authz.Policy) (int, error) {
	tw := tabwriter.NewWriter(terminalSafe(w), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tCALLER\tPORT\tMETHOD\tPATH\tSEEN\tWOULD BE")
	denied := 0
	for _, k := range slices.Sorted(mapKeys(seen)) {
		wa := seen[k]
		wl := wa.config.GetWorkload()
		target := authz.Workload{Namespace: wl.GetNamespace(), Labels: wl.GetLabels()}
		for _, s := range services {
			if s.Namespace == target.Namespace && catalog.SelectorMatches(s.Selector, target.Labels) {
				target.Services = append(target.Services, s.Name)
			}
		}
		selected, err := authz.Select(proposed, target, catalog.RootNamespaces)
		if err != nil {
			return 0, err
		}
		policies := selected
		for _, p := range authz.FromProto(wa.config.GetAuthorization()) {
			if !slices.ContainsFunc(proposed, func(q authz.Policy) bool { return q.Namespace == p.Namespace && q.Name == p.Name }) {
				policies = append(policies, p)
			}
		}
		engine, err := authz.Compile(policies)
		if err != nil {
			return 0, err
		}
		for _, a := range wa.access {
			d := engine.Decide(&authz.Request{HTTP: a.Method != "", Principal: a.Principal, Namespace: a.Namespace,
				DestPort: int(a.Port), Method: a.Method, Path: a.Path})
			if d.Allowed {
				continue
			}
			denied++
			why := "denied: no ALLOW rule matches"
			if d.Policy != "" {
				why = fmt.Sprintf("denied by %s rule %d", d.Policy, d.Rule)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", k, cmp.Or(a.Principal, "(plaintext)"), a.Port, cmp.Or(a.Method, "TCP"),
				cmp.Or(a.Path, "-"), a.Count, why)
		}
	}
	if denied > 0 {
		return denied, tw.Flush()
	}
	return 0, nil
}
