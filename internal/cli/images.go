package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/images"
)

// modulePath is this module's path, which `trellis images build` looks for
// to find the checkout it builds from.
const modulePath = "github.com/trellis-mesh/trellis"

func newImagesCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "images", Short: "Build the container images of trellis-control, trellis-proxy, trellis-node and the walkthrough's trellis-demo"}
	var cfg images.Config
	var load bool
	var push string
	build := &cobra.Command{
		Use:   "build [--repo REPO] [--tag TAG] [--out DIR] [--load-into-k8sbed] [--push REGISTRY]",
		Short: "Build the images from this checkout: static binaries, non-root, tagged with the module version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := moduleRoot()
			if err != nil {
				return err
			}
			cfg.ModuleDir = dir
			if push != "" {
				cfg.Repo = strings.TrimSuffix(push, "/")
			}
			built, err := images.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			var archives []string
			for _, b := range built {
				fmt.Fprintf(o.out, "%s\t%s\n", b.Ref, b.Archive)
				archives = append(archives, b.Archive)
			}
			if load {
				bed := exec.CommandContext(cmd.Context(), filepath.Join(dir, "scripts", "k8sbed.sh"), append([]string{"import"}, archives...)...)
				bed.Stdout, bed.Stderr = o.out, o.err
				if err := bed.Run(); err != nil {
					return fmt.Errorf("load into the test bed (is it up? scripts/k8sbed.sh up): %w", err)
				}
				fmt.Fprintln(o.out, "loaded into the k8sbed node's containerd")
			}
			for _, b := range built {
				if push == "" {
					break
				}
				if err := images.Push(cmd.Context(), b); err != nil {
					return err
				}
				fmt.Fprintf(o.out, "pushed %s\n", b.Ref)
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&cfg.Repo, "repo", "trellis.local", "repository the images are named in: REPO/trellis-proxy:TAG")
	f.StringVar(&cfg.Version, "tag", "", "the images' tag (default: the checkout's version, v0.0.0-COMMIT[-dirty])")
	f.StringVar(&cfg.OutDir, "out", "bin/images", "directory for the image archives (docker load / ctr import format)")
	f.BoolVar(&load, "load-into-k8sbed", false, "import the images into the running test bed's node (scripts/k8sbed.sh)")
	f.StringVar(&push, "push", "", "push the images to this registry (REGISTRY[/PATH]; credentials from ~/.docker/config.json); sets --repo")
	cmd.AddCommand(build)
	return cmd
}

// moduleRoot finds the checkout of this module the current directory is in.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module "+modulePath+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("trellis images build builds from a checkout of " + modulePath + ": run it inside one")
		}
		dir = parent
	}
}
