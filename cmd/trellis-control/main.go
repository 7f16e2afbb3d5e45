// Command trellis-control is the control plane: the certificate authority,
// discovery and the config stream to every proxy, and the dashboard. In
// one-host mode `trellis up` runs the same control plane as
// `trellis control`. See internal/controlplane.
//
// It links the control plane only, not the CLI, the proxy or the demo's
// workloads (a test enforces it).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/controlplane"
)

func main() {
	var cfg controlplane.Config
	fs := flag.NewFlagSet("trellis-control", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	_ = fs.Parse(os.Args[1:])
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := controlplane.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "trellis-control:", err)
		os.Exit(1)
	}
}
