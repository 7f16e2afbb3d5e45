package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

type podOptions struct {
	*options
	namespace string
	container string
}

func (p *podOptions) flags(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&p.namespace, "namespace", "n", "default", "the pod's namespace")
	cmd.Flags().StringVarP(&p.container, "container", "c", "", "container name (default: the pod's first)")
}

// find returns the named pod and the selected container's status.
func (p *podOptions) find(ctx context.Context, name string) (localmesh.PodStatus, localmesh.ContainerStatus, error) {
	pods, err := p.client().Pods(ctx)
	if err != nil {
		return localmesh.PodStatus{}, localmesh.ContainerStatus{}, err
	}
	for _, pod := range pods {
		if pod.Namespace != p.namespace || pod.Name != name {
			continue
		}
		if p.container == "" && len(pod.Containers) > 0 {
			return pod, pod.Containers[0], nil
		}
		var names []string
		for _, c := range pod.Containers {
			if c.Name == p.container {
				return pod, c, nil
			}
			names = append(names, c.Name)
		}
		return pod, localmesh.ContainerStatus{}, fmt.Errorf("container %q is not in pod %s/%s; choose one of %v", p.container, p.namespace, name, names)
	}
	return localmesh.PodStatus{}, localmesh.ContainerStatus{}, fmt.Errorf("pod %q not found in namespace %s; list pods with `trellis get pods -A`", name, p.namespace)
}

func newExecCmd(o *options) *cobra.Command {
	p := &podOptions{options: o}
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "exec [-n NS] POD [-c CONTAINER] [--kubernetes] -- COMMAND [ARGS...]",
		Short: "Run a command inside a pod: its network namespace, hosts file and environment (on a cluster, through the API server, output only)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return fmt.Errorf("usage: trellis exec [-n NS] POD -- COMMAND [ARGS...]")
			}
			if cluster.kubernetes {
				return clusterExec(cmd.Context(), o, &cluster, p.namespace, args[0], p.container, args[1:])
			}
			if err := requireRoot("trellis exec"); err != nil {
				return err
			}
			pod, c, err := p.find(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if c.Exec == nil {
				return fmt.Errorf("container %s of pod %s/%s is %s, not running; see `trellis get pods -n %s`", c.Name, pod.Namespace, pod.Name, c.State, pod.Namespace)
			}
			// As the container's own processes: its user, capabilities
			// and view. The command's exit status is ours.
			code, err := localmesh.RunSandboxed(*c.Exec, args[1:], c.Env)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	p.flags(cmd)
	cluster.register(cmd)
	return cmd
}

// clusterExec runs a command in a cluster pod's container through the API
// server, as kubectl exec does without -i: the pod's default container
// (kubectl.kubernetes.io/default-container, else its first) when container
// is empty, and the command's exit status as ours.
func clusterExec(ctx context.Context, o *options, cluster *clusterFlags, namespace, pod, container string, command []string) error {
	kc, err := cluster.connect()
	if err != nil {
		return err
	}
	if container == "" {
		p, err := kc.Client.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", namespace, pod, err)
		}
		for _, c := range p.Spec.Containers {
			if c.Name == p.Annotations["kubectl.kubernetes.io/default-container"] || container == "" {
				container = c.Name
			}
		}
	}
	err = kube.Exec(ctx, kc, namespace, pod, container, command, o.out, o.err)
	if code, ok := kube.ExitCode(err); ok {
		return exitCode(code)
	}
	return err
}
