package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/manifest"
)

type upOptions struct {
	*options
	files       []string
	detach      bool
	podCIDR     string
	serviceCIDR string
	svidTTL     time.Duration
	caCert      string
	caKey       string
	prometheus  string
	logMax      int64
}

// logMaxBytes is --log-max-bytes, or the default when the options were
// made without flags (trellis demo).
func (u *upOptions) logMaxBytes() int64 { return cmp.Or(u.logMax, localmesh.DefaultLogMaxBytes) }

func newUpCmd(o *options) *cobra.Command {
	u := &upOptions{options: o}
	cmd := &cobra.Command{
		Use:   "up -f FILE [-d]",
		Short: "Start a mesh on this host from Kubernetes manifests",
		Long: `Start a mesh on this host: every Namespace, Pod, Deployment and Service in the
manifests becomes network namespaces, veth links, service VIPs and supervised
processes. Runs in the foreground until Ctrl-C (then removes everything), or
in the background with -d (stop it with 'trellis down').`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return u.run(cmd.Context()) },
	}
	cmd.Flags().StringArrayVarP(&u.files, "filename", "f", nil, "manifest file or directory (repeatable)")
	cmd.Flags().BoolVarP(&u.detach, "detach", "d", false, "run in the background")
	cmd.Flags().StringVar(&u.podCIDR, "pod-cidr", localmesh.DefaultPodCIDR.String(), "IPv4 range for pod addresses")
	cmd.Flags().StringVar(&u.serviceCIDR, "service-cidr", localmesh.DefaultServiceCIDR.String(), "IPv4 range for service VIPs")
	cmd.Flags().DurationVar(&u.svidTTL, "svid-ttl", 24*time.Hour, "lifetime of sidecar certificates (renewed at half life); seconds are fine for tests")
	cmd.Flags().StringVar(&u.caCert, "ca-cert", "", "sign with this root or intermediate (PEM, with its chain up to the root) instead of the mesh's own root")
	cmd.Flags().StringVar(&u.caKey, "ca-key", "", "the private key of --ca-cert (PEM, PKCS#8)")
	cmd.Flags().Int64Var(&u.logMax, "log-max-bytes", localmesh.DefaultLogMaxBytes, "rotate a container's log at this size, keeping one older file")
	cmd.Flags().StringVar(&u.prometheus, "prometheus", "", "the dashboard reads its figures from this Prometheus server (http://HOST:PORT) instead of scraping the sidecars")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

func (u *upOptions) run(ctx context.Context) error {
	if err := requireRoot("trellis up"); err != nil {
		return err
	}
	cfg, initial, err := u.prepare()
	if err != nil {
		return err
	}
	if u.detach {
		return u.startDetached(ctx)
	}
	rt, err := localmesh.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = rt.Run(ctx, initial, func() {
		fmt.Fprintf(u.out, "mesh is up (state %s); Ctrl-C stops it and removes everything\n", u.stateDir)
	})
	if err == nil {
		fmt.Fprintln(u.out, "mesh stopped; everything it created is removed")
	}
	return err
}

// prepare reads and validates the manifests and checks the address ranges:
// all before anything is created.
func (u *upOptions) prepare() (localmesh.Config, *manifest.Set, error) {
	var cfg localmesh.Config
	pod, err := netip.ParsePrefix(u.podCIDR)
	if err != nil {
		return cfg, nil, fmt.Errorf("--pod-cidr %q: %w", u.podCIDR, err)
	}
	svc, err := netip.ParsePrefix(u.serviceCIDR)
	if err != nil {
		return cfg, nil, fmt.Errorf("--service-cidr %q: %w", u.serviceCIDR, err)
	}
	stateDir, err := filepath.Abs(u.stateDir)
	if err != nil {
		return cfg, nil, err
	}
	if u.svidTTL < 2*time.Second {
		return cfg, nil, fmt.Errorf("--svid-ttl %s is too short; use 2s or more", u.svidTTL)
	}
	if err := checkPrometheusURL(u.prometheus); err != nil {
		return cfg, nil, err
	}
	if u.logMaxBytes() < 4<<10 {
		return cfg, nil, fmt.Errorf("--log-max-bytes %d: use at least 4096", u.logMax)
	}
	cfg = localmesh.Config{StateDir: stateDir, PodCIDR: pod, ServiceCIDR: svc, SVIDTTL: u.svidTTL, Prometheus: u.prometheus, LogMaxBytes: u.logMaxBytes()}
	if cfg.CACert, cfg.CAKey, err = checkSuppliedCA(u.caCert, u.caKey); err != nil {
		return cfg, nil, err
	}
	set, err := loadManifests(u.files, u)
	if err != nil {
		return cfg, nil, err
	}
	if localmesh.Running(stateDir) {
		_, err := localmesh.Lock(stateDir) // for its message
		return cfg, nil, err
	}
	// Leftovers of a killed mesh still hold its routes; the runtime removes
	// them first and checks the ranges after.
	if !localmesh.HasLeftovers(stateDir) {
		if err := localmesh.CheckRanges(pod, svc); err != nil {
			return cfg, nil, err
		}
	}
	return cfg, set, nil
}

// checkPrometheusURL accepts "" or an http(s) URL with a host.
func checkPrometheusURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--prometheus %q: give the server's URL, such as http://127.0.0.1:9090", s)
	}
	return nil
}

// loadManifests reads, parses and validates manifest files, printing
// warnings and the one-time note that images are ignored.
func loadManifests(files []string, o *upOptions) (*manifest.Set, error) {
	srcs, err := manifest.ReadPaths(files)
	if err != nil {
		return nil, err
	}
	set, err := manifest.Parse(srcs)
	if err != nil {
		return nil, err
	}
	warnings, err := manifest.Validate(set)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		fmt.Fprintln(o.err, "warning:", w)
	}
	if usesImages(set) {
		fmt.Fprintln(o.err, "note: container images are ignored in one-host mode; each container's command runs as a host process inside its pod")
	}
	return set, nil
}

func usesImages(set *manifest.Set) bool {
	for _, p := range set.Pods() {
		for _, c := range p.Spec.Containers {
			if c.Image != "" {
				return true
			}
		}
	}
	for _, d := range set.Deployments() {
		for _, c := range d.Template.Spec.Containers {
			if c.Image != "" {
				return true
			}
		}
	}
	return false
}

// startDetached re-runs `trellis up` in the background, in its own session,
// and waits until it reports ready or fails.
func (u *upOptions) startDetached(ctx context.Context) error {
	if err := os.MkdirAll(u.stateDir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(u.stateDir, "trellis.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"up", "--state-dir", u.stateDir, "--pod-cidr", u.podCIDR, "--service-cidr", u.serviceCIDR,
		"--svid-ttl", u.svidTTL.String(), "--log-max-bytes", strconv.FormatInt(u.logMaxBytes(), 10)}
	if u.prometheus != "" {
		args = append(args, "--prometheus", u.prometheus)
	}
	if u.caCert != "" {
		cert, _ := filepath.Abs(u.caCert)
		key, _ := filepath.Abs(u.caKey)
		args = append(args, "--ca-cert", cert, "--ca-key", key)
	}
	for _, f := range u.files {
		abs, _ := filepath.Abs(f)
		args = append(args, "-f", abs)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mesh in the background: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	client := u.client()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("mesh failed to start:\n%s", strings.TrimSpace(lastLines(string(out), 20)))
		case <-deadline.C:
			return fmt.Errorf("mesh did not report ready within 2 minutes; see %s", logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		st, err := client.Status(ctx)
		if err != nil && !errors.Is(err, localmesh.ErrNotRunning) {
			slog.Debug("status", "err", err)
		}
		if err == nil && st.Ready {
			fmt.Fprintf(u.out, "mesh is up in the background (pid %d, state %s, log %s); stop it with `trellis down`\n",
				st.PID, u.stateDir, logPath)
			return nil
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkSuppliedCA loads an operator's CA now, so a bad one is an error of
// `up` rather than a control plane that keeps failing; it returns the
// files' absolute paths.
func checkSuppliedCA(certPath, keyPath string) (string, string, error) {
	if certPath == "" && keyPath == "" {
		return "", "", nil
	}
	if certPath == "" || keyPath == "" {
		return "", "", errors.New("--ca-cert and --ca-key go together")
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return "", "", fmt.Errorf("--ca-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return "", "", fmt.Errorf("--ca-key: %w", err)
	}
	if _, err := ca.Load(certPEM, keyPEM, "cluster.local"); err != nil {
		return "", "", fmt.Errorf("--ca-cert/--ca-key: %w", err)
	}
	cert, _ := filepath.Abs(certPath)
	key, _ := filepath.Abs(keyPath)
	return cert, key, nil
}
