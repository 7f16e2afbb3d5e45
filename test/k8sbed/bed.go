package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The node's network: its own namespace, one veth link to the host, and
// ranges that overlap nothing of the one-host mode (10.200/16, 10.201/16).
const (
	netnsName    = "trellis-k8sbed"
	hostLink     = "tkb0" // the host's end of the node's link
	hostAddr     = "10.246.0.1"
	nodeAddr     = "10.246.0.2"
	linkCIDR     = "/30"
	podCIDR      = "10.244.0.0/16"
	nodePodCIDR  = "10.244.0.0/24"
	serviceCIDR  = "10.245.0.0/16"
	apiServiceIP = "10.245.0.1"
	dnsServiceIP = "10.245.0.10"
	nodeName     = "k8sbed"
	// netnsOwner names the directory of the bed that made the namespace.
	netnsOwner = "/run/trellis-k8sbed.dir"
)

// Config says where the bed keeps its files. Both are required.
type Config struct {
	// Dir holds the running cluster: certificates, configs, data, logs,
	// pid files. Removed by Down.
	Dir string
	// Cache keeps the built binaries, by version set; kept across runs.
	Cache string
	// Source is the test/k8sbed directory.
	Source string
}

// Bed is the single-node cluster of one Config.
type Bed struct {
	cfg Config
	bin string // the built binaries, set by Up
}

// process is one component the bed starts in the node's namespace, in
// the order of this list (Down stops them in reverse).
type process struct {
	name string
	args func(b *Bed) []string
	// ready reports whether the component serves; nil: started is enough.
	ready func(ctx context.Context, b *Bed) error
}

func (b *Bed) path(elem ...string) string {
	return filepath.Join(append([]string{b.cfg.Dir}, elem...)...)
}

// Kubeconfig is the admin kubeconfig, usable from the host.
func (b *Bed) Kubeconfig() string { return b.path("admin.kubeconfig") }

// Up builds what is missing, sets up the node's network, writes the
// certificates and configs, starts every component and waits for the node
// and cluster DNS to be ready. A bed already running is an error; one left
// by a crash is cleaned up first.
func (b *Bed) Up(ctx context.Context) (err error) {
	if b.running() {
		return fmt.Errorf("the bed is already running (%s); run k8sbed down first", b.cfg.Dir)
	}
	if err := b.takeOverNetwork(ctx); err != nil {
		return err
	}
	bin, err := b.build(ctx)
	if err != nil {
		return err
	}
	b.bin = bin
	if err := b.Down(ctx); err != nil {
		return fmt.Errorf("clean up a previous bed: %w", err)
	}
	defer func() {
		if err != nil {
			log.Printf("up failed; logs in %s; cleaning up", b.path("logs"))
			_ = b.Down(context.WithoutCancel(ctx))
		}
	}()
	start := time.Now()
	for _, d := range []string{"logs", "pids", "pki"} {
		if err := os.MkdirAll(b.path(d), 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(b.path("bin"), []byte(bin), 0o644); err != nil {
		return err
	}
	if err := b.network(); err != nil {
		return fmt.Errorf("node network: %w", err)
	}
	if err := writePKI(b.path("pki")); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if err := b.writeConfigs(); err != nil {
		return fmt.Errorf("configs: %w", err)
	}
	for _, p := range processes() {
		if err := b.start(p); err != nil {
			return err
		}
		if p.ready != nil {
			if err := p.ready(ctx, b); err != nil {
				return fmt.Errorf("%s: %w (see %s)", p.name, err, b.path("logs", p.name+".log"))
			}
		}
	}
	if err := b.addons(ctx); err != nil {
		return err
	}
	log.Printf("bed up in %s; kubeconfig %s", time.Since(start).Round(100*time.Millisecond), b.Kubeconfig())
	return nil
}

// takeOverNetwork makes sure the node's namespace is this bed's to
// create: one left by a bed whose processes all died (a killed test run,
// a machine restored from a snapshot) is taken down with everything that
// bed made; one of a running bed, or of no bed known, is an error.
func (b *Bed) takeOverNetwork(ctx context.Context) error {
	if _, err := os.Stat("/run/netns/" + netnsName); err != nil {
		return nil
	}
	owner, _ := os.ReadFile(netnsOwner)
	dir := strings.TrimSpace(string(owner))
	switch {
	case dir == b.cfg.Dir:
		return nil // Up's own Down cleans it
	case dir == "":
		return fmt.Errorf("the network namespace %s exists and no bed says it made it: take that bed down with k8sbed --dir DIR down, or delete the namespace with ip netns delete %s", netnsName, netnsName)
	}
	other := &Bed{cfg: Config{Dir: dir, Cache: b.cfg.Cache, Source: b.cfg.Source}}
	if other.running() {
		return fmt.Errorf("another bed runs in %s and holds the network namespace %s: take it down with k8sbed --dir %s down", dir, netnsName, dir)
	}
	log.Printf("a bed left by a crash holds %s; taking it down (%s)", netnsName, dir)
	if err := other.Down(ctx); err != nil {
		return fmt.Errorf("take down the bed left in %s: %w", dir, err)
	}
	return nil
}

// network creates the node's namespace and its link to the host, with
// host routes to the pod and service ranges, the node's route to the
// service range, and none off the machine.
func (b *Bed) network() error {
	steps := [][]string{
		{"ip", "netns", "add", netnsName},
		{"ip", "link", "add", hostLink, "type", "veth", "peer", "name", "eth0", "netns", netnsName},
		{"ip", "addr", "add", hostAddr + linkCIDR, "dev", hostLink},
		{"ip", "link", "set", hostLink, "up"},
		{"ip", "-n", netnsName, "addr", "add", nodeAddr + linkCIDR, "dev", "eth0"},
		{"ip", "-n", netnsName, "link", "set", "eth0", "up"},
		{"ip", "-n", netnsName, "link", "set", "lo", "up"},
		{"ip", "route", "add", podCIDR, "via", nodeAddr},
		{"ip", "route", "add", serviceCIDR, "via", nodeAddr},
		// The node's own processes (the API server calling a webhook
		// Service) need a route to the service range for kube-proxy's
		// DNAT to apply: a real node has its default route.
		{"ip", "-n", netnsName, "route", "add", serviceCIDR, "dev", "eth0"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
		if s[1] == "netns" {
			if err := os.WriteFile(netnsOwner, []byte(b.cfg.Dir), 0o644); err != nil {
				return err
			}
		}
	}
	// Forwarding and bridged traffic through the hooks, in the node's
	// namespace only.
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"} {
		if out, err := b.inNode("sysctl", "-w", s).CombinedOutput(); err != nil {
			return fmt.Errorf("sysctl %s: %v: %s", s, err, out)
		}
	}
	return nil
}

// inNode is a command run in the node's network namespace (the host's
// mounts, so volumes work).
func (b *Bed) inNode(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + netnsName, "--", name}, args...)...)
}

// start starts p in the node's namespace, detached, logging to
// logs/NAME.log, and records its pid.
func (b *Bed) start(p process) error {
	logf, err := os.OpenFile(b.path("logs", p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := p.args(b)
	cmd := b.inNode(filepath.Join(b.bin, args[0]), args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), "PATH="+b.bin+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return os.WriteFile(b.path("pids", p.name), []byte(strconv.Itoa(pid)), 0o644)
}

// running reports whether any recorded component is alive.
func (b *Bed) running() bool {
	for _, p := range processes() {
		if pid := b.pid(p.name); pid > 0 && alive(pid) {
			return true
		}
	}
	return false
}

func (b *Bed) pid(name string) int {
	data, err := os.ReadFile(b.path("pids", name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// alive reports whether pid runs: a zombie does not (it is reaped here
// when it is our child, as in tests).
func alive(pid int) bool {
	var ws syscall.WaitStatus
	if got, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	rest := stat[strings.LastIndexByte(string(stat), ')')+1:]
	return len(rest) > 1 && rest[1] != 'Z'
}

// Status prints each component's pid and state, and the node's.
func (b *Bed) Status(ctx context.Context, w io.Writer) error {
	up := 0
	for _, p := range processes() {
		pid, state := b.pid(p.name), "stopped"
		if pid > 0 && alive(pid) {
			state, up = "running", up+1
		}
		fmt.Fprintf(w, "%-24s %-8s pid %d\n", p.name, state, pid)
	}
	if up == 0 {
		fmt.Fprintln(w, "the bed is down")
		return nil
	}
	out, err := b.kubectl(ctx, "get", "nodes", "--no-headers")
	fmt.Fprintf(w, "node: %s", out)
	return err
}

// kubectl runs the bed's kubectl with the admin kubeconfig.
func (b *Bed) kubectl(ctx context.Context, args ...string) (string, error) {
	if err := b.findBin(); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "kubectl"), append([]string{"--kubeconfig", b.Kubeconfig()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// waitFor polls check until it succeeds, ctx ends or limit passes.
func waitFor(ctx context.Context, what string, limit time.Duration, check func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %s: %w", what, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// socketReady waits until a unix socket accepts connections.
func socketReady(path string) func() error {
	return func() error {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
}
