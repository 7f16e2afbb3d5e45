// Command trellis-proxy is the sidecar proxy (see internal/proxy).
//
//	trellis-proxy --config FILE --cert FILE --key FILE --bundle FILE   run the sidecar
//	trellis-proxy redirect [--proxy-uid UID] [--proxy-mark MARK] [--exclude-inbound P,P] [--exclude-outbound P,P]
//	                                                                   set up capture in this pod
//
// It must stay lean: it never links the control plane's packages or
// client-go (a test enforces it).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/proxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "redirect" {
		err = runRedirect(os.Args[2:])
	} else {
		var cfg proxy.Config
		fs := flag.NewFlagSet("trellis-proxy", flag.ExitOnError)
		cfg.RegisterFlags(fs)
		_ = fs.Parse(os.Args[1:])
		err = proxy.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "trellis-proxy:", err)
		os.Exit(1)
	}
}

func runRedirect(args []string) error {
	var c proxy.CaptureFlags
	fs := flag.NewFlagSet("trellis-proxy redirect", flag.ExitOnError)
	c.Register(fs)
	_ = fs.Parse(args)
	return proxy.SetUpCapture(0, c)
}
