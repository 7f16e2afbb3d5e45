// Command k8sbed builds and runs a real single-node Kubernetes cluster on
// this machine, for Trellis's Kubernetes tests (see README.md):
//
//	k8sbed build        build the components, and the extras tests run, into the cache (if missing)
//	k8sbed up           start the cluster (building first if needed); returns when the node and DNS are ready
//	k8sbed down         stop it and remove everything it made, also after a crash
//	k8sbed status       say what runs
//	k8sbed kubeconfig   print the admin kubeconfig's path
//	k8sbed bin          print the running bed's binaries' directory (its kubectl, for one)
//	k8sbed image NAME:TAG BINARY [ARG...]
//	                    build an image of a binary (and the libraries it links) and load it into the node
//	k8sbed import ARCHIVE...
//	                    load image archives (docker save's format) into the node
//
// It needs root. Everything runs in the network namespace trellis-k8sbed,
// reached from the host over one veth link; nothing is routed off the
// machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "k8sbed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("k8sbed", flag.ContinueOnError)
	var cfg Config
	fs.StringVar(&cfg.Dir, "dir", envOr("K8SBED_DIR", "/var/lib/trellis-k8sbed"), "the running cluster's files ($K8SBED_DIR)")
	fs.StringVar(&cfg.Cache, "cache", envOr("K8SBED_CACHE", "/var/cache/trellis-k8sbed"), "where built binaries are kept, by version set ($K8SBED_CACHE)")
	fs.StringVar(&cfg.Source, "source", ".", "the test/k8sbed directory (its components/ are built)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("give a command: build, up, down, status, kubeconfig, bin, image or import")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates a network namespace, mounts and cgroups; run it with sudo")
	}
	bed := &Bed{cfg: cfg}
	switch cmd, rest := fs.Arg(0), fs.Args()[1:]; cmd {
	case "build":
		_, err := bed.build(ctx)
		for name := range extras {
			if err == nil {
				_, err = bed.BuildExtra(ctx, name)
			}
		}
		return err
	case "up":
		return bed.Up(ctx)
	case "down":
		return bed.Down(ctx)
	case "status":
		return bed.Status(ctx, os.Stdout)
	case "kubeconfig":
		fmt.Println(bed.Kubeconfig())
		return nil
	case "bin":
		if err := bed.findBin(); err != nil {
			return err
		}
		fmt.Println(bed.bin)
		return nil
	case "image":
		if len(rest) < 2 {
			return errors.New("usage: k8sbed image NAME:TAG BINARY [ARG...]")
		}
		return bed.LoadImage(ctx, rest[0], rest[1], rest[2:])
	case "import":
		if len(rest) == 0 {
			return errors.New("usage: k8sbed import ARCHIVE [ARCHIVE ...]")
		}
		return bed.Import(ctx, rest...)
	default:
		return fmt.Errorf("unknown command %q: give build, up, down, status, kubeconfig, bin, image or import", cmd)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
