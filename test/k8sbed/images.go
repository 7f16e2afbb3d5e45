package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The images every node needs, built from the bed's binaries (there is no
// registry to pull from).
const (
	pauseImage   = "trellis.local/k8sbed/pause:bed"
	corednsImage = "trellis.local/k8sbed/coredns:bed"
)

// LoadImage builds a one-layer image holding binary (a bare name is one
// of the bed's) and, for a dynamically linked one, the shared libraries
// ldd finds for it, at their host paths; it is started as /NAME ARGS...,
// and imported into the node's containerd as ref.
func (b *Bed) LoadImage(ctx context.Context, ref, binary string, args []string) error {
	return b.LoadImageAt(ctx, ref, binary, nil, args)
}

// LoadImageAt is LoadImage with the binary at each of paths (absolute,
// in the image) and started as paths[0] ARGS...; no paths means /NAME.
// It serves a binary that picks its role by the name it is run as, such
// as workloads/gammaecho at /usr/local/bin/server and .../client.
func (b *Bed) LoadImageAt(ctx context.Context, ref, binary string, paths, args []string) error {
	if err := b.findBin(); err != nil {
		return err
	}
	if !strings.Contains(binary, "/") {
		binary = filepath.Join(b.bin, binary)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image %q: %w", ref, err)
	}
	exe, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	if len(paths) == 0 {
		paths = []string{"/" + filepath.Base(binary)}
	}
	files := map[string][]byte{}
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("image %s: binary path %q is not absolute", ref, p)
		}
		files[strings.TrimPrefix(filepath.Clean(p), "/")] = exe
	}
	libs, err := sharedLibraries(ctx, binary)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	for _, l := range libs {
		data, err := os.ReadFile(l)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		files[strings.TrimPrefix(l, "/")] = data
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarOf(files))), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = append([]string{paths[0]}, args...)
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	archive := b.path("images", strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := os.MkdirAll(filepath.Dir(archive), 0o700); err != nil {
		return err
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return b.Import(ctx, archive)
}

// Import loads image archives (docker or OCI format, as `docker save`
// writes them) into the node's containerd, where pods find them by name.
func (b *Bed) Import(ctx context.Context, archives ...string) error {
	if err := b.findBin(); err != nil {
		return err
	}
	for _, a := range archives {
		out, err := exec.CommandContext(ctx, filepath.Join(b.bin, "ctr"), "--address", b.containerdSocket(),
			"-n", "k8s.io", "images", "import", a).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s: %w: %s", a, err, out)
		}
	}
	return nil
}

// tarOf is a tar archive holding files (path: content, executable), with
// the directories above them.
func tarOf(files map[string][]byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		_ = tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir})
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(files[name])), Typeflag: tar.TypeReg})
		_, _ = tw.Write(files[name])
	}
	_ = tw.Close()
	return buf.Bytes()
}

// sharedLibraries are the absolute paths of the libraries (and the
// loader) a dynamically linked binary needs, as ldd resolves them; none
// for a static one.
func sharedLibraries(ctx context.Context, binary string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", binary).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", binary, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				break
			}
		}
	}
	return libs, nil
}

// findBin sets b.bin from the running bed's record when Up did not.
func (b *Bed) findBin() error {
	if b.bin != "" {
		return nil
	}
	data, err := os.ReadFile(b.path("bin"))
	if err != nil {
		return fmt.Errorf("the bed is not up: %w", err)
	}
	b.bin = string(data)
	return nil
}
