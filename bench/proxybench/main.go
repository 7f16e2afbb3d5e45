// Command proxybench measures what a pair of mesh proxies costs: a Trellis
// sidecar pair with mutual TLS between them, against a direct connection,
// a HAProxy pair and an nginx pair, each also with mutual TLS (ECDSA P-256)
// and pooled upstream connections, in the same run, on the same backend,
// with the same load generators (fortio for HTTP, ghz for gRPC).
//
// Each arm runs in a fresh pair of network namespaces joined by a veth
// link, as two pods on one node would be: the client side holds the load
// generator and the client proxy, the server side the backend and the
// server proxy. With one worker per proxy (GOMAXPROCS=1, nbthread 1,
// worker_processes 1) both proxies are pinned to CPU 1 and the load
// generator and backend to CPU 0; with two, nothing is pinned.
//
// Run it as root through bench/run.sh, which installs the tools and builds
// the proxy. It prints Markdown: the figures, then the ratios to HAProxy
// and the targets.
//
// PROXYBENCH_KEEP=1 leaves the last arm's namespaces, configs and logs in
// place for a look (the next run removes the namespaces).
//
// The same binary is the backend (proxybench backend), the client-side
// helpers (proxybench get, idle and flood) and the floor arms' proxies
// (proxybench floor, see floor.go), started inside the namespaces.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "backend":
			err = runBackend()
		case "get":
			err = runGet(os.Args[2:])
		case "idle":
			err = runIdle(os.Args[2:])
		case "flood":
			err = runFlood(os.Args[2:])
		case "floor":
			err = runFloor(os.Args[2:])
		default:
			err = runBench(os.Args[1:])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "proxybench:", err)
			os.Exit(1)
		}
		return
	}
	if err := runBench(nil); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

// options are the run's settings.
type options struct {
	proxy    string // trellis-proxy binary
	duration time.Duration
	rates    []int
	workers  []int
	arms     []string
	idle     int
	flood    time.Duration
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("proxybench", flag.ContinueOnError)
	var o options
	var rates, workers, arms string
	fs.StringVar(&o.proxy, "proxy", "bin/trellis-proxy", "the trellis-proxy binary to measure")
	fs.DurationVar(&o.duration, "duration", 15*time.Second, "length of each fixed-rate phase (max throughput, HTTP/2 and gRPC phases take 2/3 of it)")
	fs.StringVar(&rates, "rates", "1000,5000", "HTTP/1.1 request rates, comma-separated")
	fs.StringVar(&workers, "workers", "1,2", "workers per proxy to measure, comma-separated")
	fs.StringVar(&arms, "arms", strings.Join(allArms, ","), "arms to run, comma-separated")
	fs.IntVar(&o.idle, "idle", 1000, "idle keep-alive connections held for the memory-per-connection figure")
	fs.DurationVar(&o.flood, "flood", 5*time.Second, "length of each HTTP/2 flood beside the well-behaved client (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.rates, err = ints(rates); err != nil {
		return fmt.Errorf("-rates: %w", err)
	}
	if o.workers, err = ints(workers); err != nil {
		return fmt.Errorf("-workers: %w", err)
	}
	o.arms = strings.Split(arms, ",")
	for _, a := range o.arms {
		if !slices.Contains(allArms, a) {
			return fmt.Errorf("-arms: unknown arm %q: use %s", a, strings.Join(allArms, ", "))
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: each arm runs in network namespaces of its own")
	}
	if err := checkTools(o); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var results []*result
	for _, w := range o.workers {
		for _, arm := range o.arms {
			fmt.Fprintf(os.Stderr, "== %s, %d worker(s)\n", arm, w)
			r, err := measure(ctx, o, arm, w)
			if err != nil {
				return fmt.Errorf("%s, %d worker(s): %w", arm, w, err)
			}
			results = append(results, r)
		}
	}
	report(os.Stdout, o, results)
	return nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
