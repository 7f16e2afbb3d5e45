package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

func newApplyCmd(o *options) *cobra.Command {
	return manifestCmd(o, "apply", "Create or update objects in the running mesh from manifests",
		func(ctx context.Context, c *localmesh.Client, srcs []manifest.Source) (localmesh.ApplyResult, error) {
			return c.Apply(ctx, srcs)
		})
}

func newDeleteCmd(o *options) *cobra.Command {
	return manifestCmd(o, "delete", "Delete the objects named in manifests from the running mesh",
		func(ctx context.Context, c *localmesh.Client, srcs []manifest.Source) (localmesh.ApplyResult, error) {
			return c.Delete(ctx, srcs)
		})
}

func manifestCmd(o *options, verb, short string,
	do func(context.Context, *localmesh.Client, []manifest.Source) (localmesh.ApplyResult, error)) *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   verb + " -f FILE",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srcs, err := manifest.ReadPaths(files)
			if err != nil {
				return err
			}
			res, err := do(cmd.Context(), o.client(), srcs)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(o.err, "warning:", w)
			}
			for _, l := range res.Lines {
				fmt.Fprintln(o.out, l)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable)")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}
