package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newControlPlaneCmd stops and starts a one-host mesh's control plane:
// the local analogue of scaling istiod to zero and back. Proxies keep
// serving their last config and certificates meanwhile.
func newControlPlaneCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "control-plane", Short: "Stop or start the mesh's control plane (proxies keep their last config)"}
	for _, verb := range []string{"stop", "start"} {
		running := verb == "start"
		cmd.AddCommand(&cobra.Command{
			Use:   verb,
			Short: verb + " the control plane",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				_, err := o.client().SetControlPlane(cmd.Context(), running)
				if err != nil {
					return err
				}
				if running {
					fmt.Fprintln(o.out, "control plane started; proxies reconnect within a few seconds")
				} else {
					fmt.Fprintln(o.out, "control plane stopped; proxies keep their last config")
				}
				return nil
			},
		})
	}
	return cmd
}
