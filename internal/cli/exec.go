package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

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
	cmd := &cobra.Command{
		Use:   "exec [-n NS] POD [-c CONTAINER] -- COMMAND [ARGS...]",
		Short: "Run a command inside a pod: its network namespace, hosts file and environment",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return fmt.Errorf("usage: trellis exec [-n NS] POD -- COMMAND [ARGS...]")
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
	return cmd
}
