package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/install"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
)

// valuesFlags are the install's -f and --set.
type valuesFlags struct {
	files, sets []string
}

// register adds the flags; short is -f's meaning ("" where -f names a
// manifest, as in `trellis inject`).
func (f *valuesFlags) register(cmd *cobra.Command, short string) {
	cmd.Flags().StringArrayVarP(&f.files, "values", short, nil, "values file (YAML; repeatable, later wins)")
	cmd.Flags().StringArrayVar(&f.sets, "set", nil, "KEY=VALUE (repeatable): image.repository, image.tag, image.pullPolicy, controlPlane.replicas, controlPlane.certificateTTL, nodeAgent.enabled, prometheus.enabled, prometheus.image, prometheus.scrapeInterval, tracing.endpoint, tracing.sampling, trustDomain, namespace")
}

func (f *valuesFlags) values() (install.Values, error) {
	return f.valuesFor(false)
}

// valuesFor reads the values; uninstall is set where the images do not
// matter, so a CLI without a version needs no image.tag, and where every
// optional part is planned (deleting one never installed is a no-op).
func (f *valuesFlags) valuesFor(uninstall bool) (install.Values, error) {
	v := install.Defaults()
	for _, file := range f.files {
		if err := v.LoadFile(file); err != nil {
			return v, err
		}
	}
	for _, s := range f.sets {
		if err := v.Set(s); err != nil {
			return v, err
		}
	}
	if uninstall {
		if v.Image.Tag == "" {
			v.Image.Tag = "any"
		}
		v.NodeAgent.Enabled = true
		v.Prometheus.Enabled = true
	}
	return v, v.Check()
}

// installObjects are the install's objects, as the API server takes them.
func installObjects(v install.Values) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for _, o := range install.Objects(v) {
		u, err := kube.Unstructured(o)
		if err != nil {
			return nil, err
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// plan renders the install's objects for the cluster and
// connects to it.
func plan(v install.Values, cluster kubeclient.Target) ([]*unstructured.Unstructured, *kube.Applier, error) {
	objs, err := installObjects(v)
	if err != nil {
		return nil, nil, err
	}
	rc, err := kubeclient.RESTConfig(cluster)
	if err != nil {
		return nil, nil, err
	}
	rc.UserAgent = "trellis-install"
	a, err := kube.NewApplier(rc)
	return objs, a, err
}

func newInstallCmd(o *options) *cobra.Command {
	var vf valuesFlags
	var dryRun, wait bool
	var cluster kubeclient.Target
	cmd := &cobra.Command{
		Use:   "install [--dry-run] [-f values.yaml] [--set KEY=VALUE] [--wait=false]",
		Short: "Install Trellis into a Kubernetes cluster (CRDs, RBAC, control plane, injection webhook), or print it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := vf.values()
			if err != nil {
				return err
			}
			if dryRun {
				data, err := install.Render(v)
				if err != nil {
					return err
				}
				_, err = o.out.Write(data)
				return err
			}
			objs, a, err := plan(v, cluster)
			if err != nil {
				return err
			}
			if err := a.Install(cmd.Context(), objs, wait, o.out); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Trellis is installed in namespace %s. Label a namespace to mesh its new pods:\n  kubectl label namespace NAME trellis.io/inject=enabled\n", v.Namespace)
			return nil
		},
	}
	vf.register(cmd, "f")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the objects (YAML) instead of applying them")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the control plane is ready and the webhook trusted")
	targetFlags(cmd, &cluster, "")
	return cmd
}

func newUninstallCmd(o *options) *cobra.Command {
	var vf valuesFlags
	var cluster kubeclient.Target
	cmd := &cobra.Command{
		Use:   "uninstall [-f values.yaml] [--set KEY=VALUE]",
		Short: "Remove everything trellis install created; meshed pods keep running and come back without a sidecar",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := vf.valuesFor(true)
			if err != nil {
				return err
			}
			objs, a, err := plan(v, cluster)
			if err != nil {
				return err
			}
			if err := a.Uninstall(cmd.Context(), objs, o.out); err != nil {
				return err
			}
			fmt.Fprintln(o.out, "Trellis is uninstalled.")
			return nil
		},
	}
	vf.register(cmd, "f")
	targetFlags(cmd, &cluster, "")
	return cmd
}

func newInjectCmd(o *options) *cobra.Command {
	var vf valuesFlags
	var file, rootFile, namespace string
	var cluster kubeclient.Target
	cmd := &cobra.Command{
		Use:   "inject -f FILE [--ca-root FILE] [--set KEY=VALUE]",
		Short: "Add the sidecar to the pods and pod templates of a manifest offline, as the webhook would (for GitOps)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := vf.values()
			if err != nil {
				return err
			}
			var in []byte
			if file == "-" {
				in, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
			} else {
				in, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			roots, err := injectRoots(cmd.Context(), rootFile, cluster)
			if err != nil {
				return err
			}
			cfg := inject.Config{ProxyImage: v.Image.Repository + "/trellis-proxy:" + v.Image.Tag, PullPolicy: corev1.PullPolicy(v.Image.PullPolicy),
				ControlPlane: install.ControlPlane + "." + v.Namespace + ".svc:15012", TrustDomain: v.TrustDomain, RootPEM: roots,
				Traces: v.Tracing.Endpoint, TraceSampling: v.Tracing.Sampling}
			out, err := injectManifest(in, namespace, cfg)
			if err != nil {
				return err
			}
			_, err = o.out.Write(out)
			return err
		},
	}
	vf.register(cmd, "") // -f is the manifest, as in kubectl and istioctl kube-inject
	cmd.Flags().StringVarP(&file, "filename", "f", "", "manifest to inject (YAML, one or more documents; - for stdin)")
	cmd.Flags().StringVar(&rootFile, "ca-root", "", "the mesh's roots (PEM); default: read from the cluster's webhook registration")
	targetFlags(cmd, &cluster, "the cluster the roots are read from: ")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of objects that name none")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// injectRoots reads the mesh's roots from file, or from the caBundle the
// control plane keeps in the webhook registration.
func injectRoots(ctx context.Context, file string, cluster kubeclient.Target) ([]byte, error) {
	if file != "" {
		return os.ReadFile(file)
	}
	client, _, err := kubeclient.NewClient(cluster, "trellis-inject")
	if err != nil {
		return nil, fmt.Errorf("%w (or give the roots with --ca-root)", err)
	}
	roots, err := kube.WebhookCABundle(ctx, client, kube.WebhookConfigName)
	if err != nil {
		return nil, fmt.Errorf("read the mesh's roots from the cluster: %w (is Trellis installed? or give --ca-root)", err)
	}
	return roots, nil
}

// podTemplatePaths are where each workload kind keeps its pod template.
var podTemplatePaths = map[string][]string{
	"Deployment": {"spec", "template"}, "StatefulSet": {"spec", "template"}, "DaemonSet": {"spec", "template"},
	"ReplicaSet": {"spec", "template"}, "Job": {"spec", "template"}, "CronJob": {"spec", "jobTemplate", "spec", "template"},
}

// injectManifest injects every Pod and pod template of a multi-document
// manifest and writes every document back, the others unchanged.
func injectManifest(in []byte, defaultNS string, cfg inject.Config) ([]byte, error) {
	var out bytes.Buffer
	for i, doc := range splitYAML(in) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		ns := u.GetNamespace()
		if ns == "" {
			ns = defaultNS
		}
		path, workload := podTemplatePaths[u.GetKind()]
		if u.GetKind() == "Pod" {
			path = []string{}
		}
		if workload || u.GetKind() == "Pod" {
			if err := injectAt(u, path, ns, cfg); err != nil {
				return nil, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
			}
		}
		data, err := yaml.Marshal(u.Object)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(data)
	}
	return out.Bytes(), nil
}

// injectAt injects the pod (or pod template) at path in u.
func injectAt(u *unstructured.Unstructured, path []string, ns string, cfg inject.Config) error {
	m := u.Object
	if len(path) > 0 {
		var ok bool
		if m, ok, _ = unstructured.NestedMap(u.Object, path...); !ok {
			return fmt.Errorf("no pod template at %s", strings.Join(path, "."))
		}
	}
	var pod corev1.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &pod); err != nil {
		return err
	}
	var skipped *inject.Skipped
	if err := inject.Pod(&pod, ns, cfg); errors.As(err, &skipped) {
		return nil
	} else if err != nil {
		return err
	}
	data, err := json.Marshal(&pod)
	if err != nil {
		return err
	}
	var injected map[string]any
	if err := json.Unmarshal(data, &injected); err != nil {
		return err
	}
	delete(injected, "status")
	if meta, ok := injected["metadata"].(map[string]any); ok {
		delete(meta, "creationTimestamp")
	}
	if len(path) == 0 {
		u.Object = injected
		return nil
	}
	return unstructured.SetNestedMap(u.Object, injected, path...)
}

// splitYAML splits a stream at "---" lines.
func splitYAML(in []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	for line := range bytes.SplitAfterSeq(in, []byte("\n")) {
		if t := bytes.TrimSpace(line); bytes.Equal(t, []byte("---")) {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(docs, cur)
}

func newCheckCmd(o *options) *cobra.Command {
	var pre bool
	var namespace string
	var cluster kubeclient.Target
	cmd := &cobra.Command{
		Use:   "check [--pre]",
		Short: "Check a Kubernetes cluster before install (--pre), or the installed mesh: control plane, webhook, roots, sidecars",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clients, err := kubeclient.Connect(cluster, "trellis-check")
			if err != nil {
				return err
			}
			c := &kube.Checker{Clients: clients, Namespace: namespace}
			var results []kube.CheckResult
			if pre {
				results = c.Pre(cmd.Context())
			} else {
				results = c.Installed(cmd.Context())
			}
			failed := 0
			group := ""
			for _, r := range results {
				if r.Group != group {
					group = r.Group
					fmt.Fprintf(o.out, "%s\n%s\n", group, strings.Repeat("-", len(group)))
				}
				mark := map[string]string{"ok": "√", "warn": "‼", "fail": "×"}[r.Status]
				line := mark + " " + r.Name
				if r.Detail != "" {
					line += ": " + r.Detail
				}
				fmt.Fprintln(o.out, line)
				if r.Hint != "" && r.Status != "ok" {
					fmt.Fprintln(o.out, "    → "+r.Hint)
				}
				if r.Status == "fail" {
					failed++
				}
			}
			if failed > 0 {
				fmt.Fprintf(o.out, "\n%d check(s) failed\n", failed)
				return exitCode(1)
			}
			fmt.Fprintln(o.out, "\nStatus check results are √")
			return nil
		},
	}
	cmd.Flags().BoolVar(&pre, "pre", false, "check the cluster can take an install, instead of the installed mesh")
	targetFlags(cmd, &cluster, "")
	cmd.Flags().StringVar(&namespace, "trellis-namespace", "trellis-system", "the namespace Trellis is installed in")
	cmd.AddCommand(newCheckNetpolCmd(o))
	return cmd
}

func newRestartInjectedCmd(o *options) *cobra.Command {
	var namespace string
	var cluster kubeclient.Target
	cmd := &cobra.Command{
		Use:   "restart-injected -n NAMESPACE",
		Short: "Restart the Deployments, StatefulSets and DaemonSets of a meshed namespace whose pods run without a sidecar",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clients, err := kubeclient.Connect(cluster, "trellis-restart-injected")
			if err != nil {
				return err
			}
			done, err := kube.RestartInjected(cmd.Context(), clients, namespace)
			for _, d := range done {
				fmt.Fprintf(o.out, "restarted %s/%s\n", namespace, d)
			}
			if err == nil && len(done) == 0 {
				fmt.Fprintf(o.out, "every pod of %s has its sidecar (or opted out)\n", namespace)
			}
			return err
		},
	}
	targetFlags(cmd, &cluster, "")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "the meshed namespace (required)")
	_ = cmd.MarkFlagRequired("namespace")
	return cmd
}
