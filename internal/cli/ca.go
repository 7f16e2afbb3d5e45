package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/push"
)

// newCACmd groups the certificate authority's commands.
func newCACmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and rotate the mesh's certificate authority"}
	var timeout time.Duration
	var kubernetes bool
	var cluster kubeclient.Target
	var namespace string
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the root: add a new root to the bundle, switch signing to it, drop the old one",
		Long: `Rotate the mesh's root CA in three checked phases, with no failed request:
  1. prepare:  a new root joins the trust bundle; wait until every proxy holds it
  2. activate: the new root signs; wait until every proxy has renewed its certificate
  3. finish:   the old root leaves the bundle; wait until every proxy holds the new bundle
A rotation interrupted part way resumes from its phase. With --kubernetes it
rotates an installed mesh's root (kept in the Secret trellis-system/trellis-ca).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !kubernetes {
				return rotateRoot(cmd.Context(), o, controlClient(o.stateDir), timeout)
			}
			admin, err := newKubeCAAdmin(cluster, namespace, timeout)
			if err != nil {
				return err
			}
			return rotateRoot(cmd.Context(), o, admin, timeout)
		},
	}
	rotate.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long each phase may wait for the proxies")
	rotate.Flags().BoolVar(&kubernetes, "kubernetes", false, "rotate the root of the mesh installed in the cluster of --kubeconfig")
	targetFlags(rotate, &cluster, "with --kubernetes: ")
	rotate.Flags().StringVar(&namespace, "trellis-namespace", "trellis-system", "the namespace Trellis is installed in (with --kubernetes)")
	cmd.AddCommand(rotate)
	return cmd
}

// caAdmin is what root rotation needs of a control plane: the one-host
// admin socket (controlplane.Client), or an installed mesh's replicas
// (kubeCAAdmin).
type caAdmin interface {
	CA(ctx context.Context) (controlplane.CAStatus, error)
	Rotate(ctx context.Context, step string) (controlplane.CAStatus, error)
	Proxies(ctx context.Context) ([]push.ProxyStatus, error)
}

func rotateRoot(ctx context.Context, o *options, admin caAdmin, timeout time.Duration) error {
	st, err := admin.CA(ctx)
	if err != nil {
		return err
	}
	steps := []struct {
		step, phase, wait string
		done              func(controlplane.CAStatus, push.ProxyStatus) bool
	}{
		{"prepare", "stable", "every proxy trusts the new root", holdsBundle},
		{"activate", "prepared", "every proxy has a certificate from the new root", func(c controlplane.CAStatus, p push.ProxyStatus) bool {
			return p.CertIssuer == c.Signer
		}},
		{"finish", "activated", "every proxy dropped the old root", holdsBundle},
	}
	started := false
	for i, s := range steps {
		if !started && st.Phase != s.phase {
			continue
		}
		started = true
		if st, err = admin.Rotate(ctx, s.step); err != nil {
			return fmt.Errorf("rotation step %s: %w", s.step, err)
		}
		fmt.Fprintf(o.out, "phase %d/3 %s: done; waiting until %s\n", i+1, s.step, s.wait)
		n, err := waitProxies(ctx, admin, timeout, func(p push.ProxyStatus) bool { return s.done(st, p) })
		if err != nil {
			return fmt.Errorf("phase %d/3 %s: %w (run `trellis ca rotate` again to resume)", i+1, s.step, err)
		}
		fmt.Fprintf(o.out, "phase %d/3 %s: %d proxies ready\n", i+1, s.step, n)
	}
	if !started {
		return fmt.Errorf("the CA is in phase %q, which rotate does not know", st.Phase)
	}
	fmt.Fprintf(o.out, "root rotated: signing with %s\n", st.Signer[:16])
	return nil
}

func holdsBundle(c controlplane.CAStatus, p push.ProxyStatus) bool {
	return p.Bundle == c.BundleVersion
}

// waitProxies polls until every connected proxy satisfies ok, and
// returns how many there are.
func waitProxies(ctx context.Context, admin caAdmin, timeout time.Duration, ok func(push.ProxyStatus) bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	behind := ""
	for {
		st, err := admin.Proxies(ctx)
		if err != nil {
			if ctx.Err() != nil && behind != "" {
				return 0, fmt.Errorf("timed out waiting for proxy %s", behind)
			}
			return 0, err
		}
		n := 0
		behind = ""
		for _, p := range st {
			if !p.Connected {
				continue
			}
			n++
			if !ok(p) && behind == "" {
				behind = p.Namespace + "/" + p.Pod
			}
		}
		if behind == "" {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("timed out waiting for proxy %s", behind)
		case <-tick.C:
		}
	}
}
