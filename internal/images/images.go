// Package images builds the OCI images of Trellis's three binaries
// (trellis-control, trellis-proxy, trellis-node), and of the walkthrough's
// trellis-demo, from a checkout of this module: each a single layer holding one static binary, run as a non-root
// user by default, tagged with the module's version. internal/cli's
// `trellis images build` is its only importer; go-containerregistry stays
// here.
package images

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec is one image: a command of this module and the user it runs as.
type Spec struct {
	Name   string // the image's name
	Binary string // the binary's name, on the image's PATH; default Name
	Pkg    string // the command's package, relative to the module root
	User   string // uid:gid by default; a pod's securityContext may change it
}

func (s Spec) binary() string { return cmp.Or(s.Binary, s.Name) }

// Specs are the images a Trellis install runs, and the walkthrough's
// (trellis-demo: the trellis CLI, whose hidden `trellis example` commands
// are the demo database and its clients; examples/kubernetes runs it). The
// proxy runs as 1337 (Istio's uid, which the capture rules let through);
// the others as 65532, the "nonroot" of distroless images. The node agent
// needs CAP_NET_ADMIN, which its DaemonSet grants.
var Specs = []Spec{
	{Name: "trellis-control", Pkg: "./cmd/trellis-control", User: "65532:65532"},
	{Name: "trellis-proxy", Pkg: "./cmd/trellis-proxy", User: "1337:1337"},
	{Name: "trellis-node", Pkg: "./cmd/trellis-node", User: "65532:65532"},
	{Name: "trellis-demo", Binary: "trellis", Pkg: "./cmd/trellis", User: "65532:65532"},
}

// versionStamp is the variable that carries a build's version.
const versionStamp = "github.com/trellis-mesh/trellis/internal/version.stamp"

// binDir is where the binary sits in each image.
const binDir = "/usr/local/bin"

// Config says what to build. ModuleDir is required.
type Config struct {
	// ModuleDir is the root of a checkout of this module (its go.mod).
	ModuleDir string
	// Repo prefixes every image's name: REPO/trellis-proxy:VERSION.
	// Default "trellis.local".
	Repo string
	// Version is every image's tag. Default: the checkout's version,
	// v0.0.0-<commit>, with -dirty when it has uncommitted changes.
	Version string
	// OutDir receives one image archive per image (NAME.tar, docker
	// format, which `docker load` and `ctr images import` read). Required.
	OutDir string
}

// Built is one image made by Build.
type Built struct {
	Ref     name.Tag
	Image   v1.Image
	Archive string // its archive in OutDir
}

// Build compiles each of Specs statically and packs it into an image.
func Build(ctx context.Context, cfg Config) ([]Built, error) {
	if cfg.ModuleDir == "" || cfg.OutDir == "" {
		return nil, errors.New("images: the module directory and the output directory are required")
	}
	if cfg.Repo == "" {
		cfg.Repo = "trellis.local"
	}
	if cfg.Version == "" {
		v, err := checkoutVersion(ctx, cfg.ModuleDir)
		if err != nil {
			return nil, err
		}
		cfg.Version = v
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	var out []Built
	for _, s := range Specs {
		b, err := build(ctx, cfg, s)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func build(ctx context.Context, cfg Config, s Spec) (Built, error) {
	ref, err := name.NewTag(cfg.Repo + "/" + s.Name + ":" + cfg.Version)
	if err != nil {
		return Built{}, fmt.Errorf("tag: %w (check --repo and --tag)", err)
	}
	binary := filepath.Join(cfg.OutDir, s.Name+".bin")
	// The binaries report the tag they are shipped under (istio_build).
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X "+versionStamp+"="+cfg.Version, "-o", binary, s.Pkg)
	cmd.Dir = cfg.ModuleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Built{}, fmt.Errorf("go build %s: %w\n%s", s.Pkg, err, out)
	}
	defer os.Remove(binary)
	exe, err := os.ReadFile(binary)
	if err != nil {
		return Built{}, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerOf(s.binary(), exe))), nil
	})
	if err != nil {
		return Built{}, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return Built{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Built{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: time.Unix(0, 0)}
	cf.Config.Entrypoint = []string{binDir + "/" + s.binary()}
	cf.Config.Env = []string{"PATH=" + binDir + ":/usr/bin:/bin"}
	cf.Config.User = s.User
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   s.Name,
		"org.opencontainers.image.version": cfg.Version,
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return Built{}, err
	}
	archive := filepath.Join(cfg.OutDir, s.Name+".tar")
	if err := tarball.WriteToFile(archive, ref, img); err != nil {
		return Built{}, err
	}
	return Built{Ref: ref, Image: img, Archive: archive}, nil
}

// layerOf is a layer holding the executable at binDir/name (and the
// directories above it), with fixed times so a rebuild of the same binary
// makes the same image.
func layerOf(name string, exe []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		_ = tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
	}
	_ = tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(binDir, "/") + "/" + name, Mode: 0o755,
		Size: int64(len(exe)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(exe)
	_ = tw.Close()
	return buf.Bytes()
}

// checkoutVersion is v0.0.0-<commit>[-dirty] of the git checkout at dir.
func checkoutVersion(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "", fmt.Errorf("images: no version given and %s is not a git checkout (%v): give --tag", dir, err)
	}
	v := "v0.0.0-" + strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain").Output(); err == nil && len(st) > 0 {
		v += "-dirty"
	}
	return v, nil
}

// Push writes b to its registry under the tag REGISTRY/NAME:VERSION,
// with credentials from the user's docker config, as `docker push` would.
func Push(ctx context.Context, b Built) error {
	if err := remote.Write(b.Ref, b.Image, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", b.Ref, err)
	}
	return nil
}
