package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// kubeVersion is the Kubernetes release the bed runs (components/kube/go.mod).
const kubeVersion = "v1.37.2"

// component is one Go module under components/ (or the bed's own) and the
// commands built from it.
type component struct {
	dir  string   // under Config.Source
	pkgs []string // built with `go build -o BIN/`
	tags string
	// ldflags stamps versions into the binaries.
	ldflags string
}

var components = []component{
	{dir: "components/kube", pkgs: []string{
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubelet",
		"k8s.io/kubernetes/cmd/kube-proxy", "k8s.io/kubernetes/cmd/kubectl",
	}, ldflags: "-X k8s.io/component-base/version.gitVersion=" + kubeVersion +
		" -X k8s.io/client-go/pkg/version.gitVersion=" + kubeVersion},
	{dir: "components/etcd", pkgs: []string{"."}},
	{dir: "components/containerd", tags: "no_btrfs", pkgs: []string{
		"github.com/containerd/containerd/v2/cmd/containerd",
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
		"github.com/containerd/containerd/v2/cmd/ctr",
	}},
	{dir: "components/crictl", pkgs: []string{"sigs.k8s.io/cri-tools/cmd/crictl"}},
	{dir: "components/coredns", pkgs: []string{"github.com/coredns/coredns"}},
	{dir: "images/pause", pkgs: []string{"."}},
}

// extras are components only some tests run, each cached under its own
// version key, so that adding one does not rebuild the node's.
var extras = map[string]component{
	// The Prometheus server of installs with prometheus.enabled, with its
	// Kubernetes service discovery only (Debian's build has none).
	"prometheus": {dir: "components/prometheus", tags: "remove_all_sd,enable_kubernetes_sd",
		pkgs: []string{"github.com/prometheus/prometheus/cmd/prometheus"}},
}

// hostTools are what the bed takes from Debian's packages (scripts/k8sbed.sh
// installs them): runc, the CNI plugins, and what kube-proxy's nftables
// mode runs.
var hostTools = map[string]string{
	"/usr/sbin/runc":          "runc",
	"/usr/lib/cni/bridge":     "containernetworking-plugins",
	"/usr/lib/cni/host-local": "containernetworking-plugins",
	"/usr/lib/cni/loopback":   "containernetworking-plugins",
	"/usr/sbin/nft":           "nftables",
	"/usr/sbin/conntrack":     "conntrack",
}

// build makes sure every component is built for the current version set and
// returns the directory holding the binaries. A version set is the Go
// version and every component's go.mod and go.sum: the binaries are kept in
// the cache under its hash and built only when missing.
func (b *Bed) build(ctx context.Context) (string, error) {
	var missing []string
	for path, pkg := range hostTools {
		if _, err := os.Stat(path); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return "", fmt.Errorf("missing Debian packages: apt-get install %s (scripts/k8sbed.sh does)", strings.Join(slices.Compact(missing), " "))
	}
	key, err := b.versionKey()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(b.cfg.Cache, key, "bin")
	return bin, cached(bin, func(tmp string) error {
		log.Printf("building the bed's components (Kubernetes %s) into %s; a cold build takes about 15 minutes on 2 cores", kubeVersion, bin)
		for _, c := range components {
			if err := compile(ctx, b.cfg.Source, tmp, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// cached makes dir with build unless it is complete already: build fills
// a fresh dir.partial, which becomes dir once build succeeds, so a build
// cut short is never taken for a finished one.
func cached(dir string, build func(tmp string) error) error {
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return nil
	}
	tmp := dir + ".partial"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := build(tmp); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// compile builds c's commands into dir.
func compile(ctx context.Context, source, dir string, c component) error {
	start := time.Now()
	args := []string{"build", "-trimpath", "-o", dir + "/"}
	if c.tags != "" {
		args = append(args, "-tags", c.tags)
	}
	if c.ldflags != "" {
		args = append(args, "-ldflags", c.ldflags)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, c.pkgs...)...)
	cmd.Dir = filepath.Join(source, c.dir)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", c.dir, err, out)
	}
	log.Printf("built %s in %s", c.dir, time.Since(start).Round(time.Second))
	return nil
}

// BuildExtra builds the extra component name unless the cache has it for
// its version (the Go toolchain, its tags and module files) and returns
// the directory holding its binaries.
func (b *Bed) BuildExtra(ctx context.Context, name string) (string, error) {
	c, ok := extras[name]
	if !ok {
		return "", fmt.Errorf("no extra component %q", name)
	}
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), c.tags)
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(b.cfg.Source, c.dir, f))
		if err != nil {
			return "", fmt.Errorf("version of %s: %w (run k8sbed from test/k8sbed, or give --source)", name, err)
		}
		h.Write(data)
	}
	bin := filepath.Join(b.cfg.Cache, "extras", name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	return bin, cached(bin, func(tmp string) error {
		log.Printf("building %s into %s (a few minutes, once per version)", name, bin)
		return compile(ctx, b.cfg.Source, tmp, c)
	})
}

// versionKey hashes what decides the binaries: the Go toolchain and every
// component's module files (the pause image's source too).
func (b *Bed) versionKey() (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), kubeVersion)
	var files []string
	for _, c := range components {
		for _, f := range []string{"go.mod", "go.sum"} {
			files = append(files, filepath.Join(b.cfg.Source, c.dir, f))
		}
	}
	files = append(files, filepath.Join(b.cfg.Source, "images/pause/main.go"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(f, "go.sum") {
			continue // a module without dependencies
		}
		if err != nil {
			return "", fmt.Errorf("version set: %w (run k8sbed from test/k8sbed, or give --source)", err)
		}
		fmt.Fprintf(h, "%s %d\n", f[len(b.cfg.Source):], len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
