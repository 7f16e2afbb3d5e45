// Command gammaecho is the backend of the bed's Gateway API conformance
// runs (the Mesh profile): one binary that is an echo server, and an echo
// client when started as `client` (by that name, or with `client` as its
// first argument). It reimplements, in a few hundred lines, the text
// format of Istio's test echo app (the image
// registry.k8s.io/gateway-api/echo-advanced), which the suite's
// sigs.k8s.io/gateway-api/conformance/utils/echo parses: the server
// answers every request with `Key=value` lines describing it, and the
// client, which the suite runs in a pod over exec, prints what it sent
// and got as `[i] Key=value` and `[i body] line` lines.
//
// Server flags follow the echo app's: --port, --grpc, --tcp and --tls
// (repeatable or comma-separated; a --port also in --tls serves HTTPS),
// --crt and --key (missing files: a self-signed certificate), --version
// and --cluster. Client usage: client URL [--count N] [-H Name:Value]...
// [--method M] [--timeout D], with http, https and grpc URLs.
//
// The bed's conformance harness builds it and loads it with
// Bed.LoadImageAt at /usr/local/bin/server (the entrypoint) and
// /usr/local/bin/client (which the suite execs by name).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	client, args := role(os.Args)
	var err error
	if client {
		var cfg clientConfig
		if cfg, err = parseClientArgs(args); err == nil {
			err = runClient(ctx, cfg, os.Stdout)
		}
	} else {
		var cfg serverConfig
		if cfg, err = parseServerArgs(args); err == nil {
			err = runServer(ctx, cfg)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gammaecho:", err)
		os.Exit(1)
	}
}

// role says whether argv asks for the client, and the arguments left for
// it: the binary's name, or else its first argument, picks the role.
func role(argv []string) (client bool, args []string) {
	switch filepath.Base(argv[0]) {
	case "client":
		return true, argv[1:]
	case "server":
		return false, argv[1:]
	}
	if len(argv) > 1 && (argv[1] == "client" || argv[1] == "server") {
		return argv[1] == "client", argv[2:]
	}
	return false, argv[1:]
}

// parseServerArgs turns the echo app's server flags into a serverConfig.
func parseServerArgs(args []string) (serverConfig, error) {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	var httpPorts, grpcPorts, tcpPorts, tlsPorts portList
	fs.Var(&httpPorts, "port", "HTTP port (HTTPS if also in --tls); repeatable; default 8080")
	fs.Var(&grpcPorts, "grpc", "gRPC port (plaintext HTTP/2); repeatable")
	fs.Var(&tcpPorts, "tcp", "TCP echo port; repeatable")
	fs.Var(&tlsPorts, "tls", "the --port ports that serve HTTPS; repeatable")
	var cfg serverConfig
	fs.StringVar(&cfg.CertFile, "crt", "", "TLS certificate (PEM); missing: self-signed")
	fs.StringVar(&cfg.KeyFile, "key", "", "TLS key (PEM); missing: self-signed")
	fs.StringVar(&cfg.Version, "version", "", "reported as ServiceVersion")
	fs.StringVar(&cfg.Cluster, "cluster", "", "reported as Cluster")
	if err := fs.Parse(args); err != nil {
		return serverConfig{}, err
	}
	if fs.NArg() > 0 {
		return serverConfig{}, fmt.Errorf("server: unexpected argument %q", fs.Arg(0))
	}
	if len(httpPorts) == 0 {
		httpPorts = portList{8080} // the echo app's default
	}
	for _, p := range httpPorts {
		if slices.Contains(tlsPorts, p) {
			cfg.HTTPS = append(cfg.HTTPS, p)
		} else {
			cfg.HTTP = append(cfg.HTTP, p)
		}
	}
	cfg.GRPC, cfg.TCP = grpcPorts, tcpPorts
	cfg.Hostname, _ = os.Hostname()
	return cfg, nil
}

// portList is a repeatable flag of ports, each use one port or several
// separated by commas.
type portList []int

func (l *portList) String() string { return fmt.Sprint([]int(*l)) }

func (l *portList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil {
			return fmt.Errorf("port %q: want a number from 0 to 65535", f)
		}
		*l = append(*l, int(p))
	}
	return nil
}
