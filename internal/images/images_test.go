package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestBuildAndPush builds the images from this checkout, reads each
// archive back as `docker load` would, checks what runs and as whom, and
// pushes one to a registry (go-containerregistry's, in memory, on
// loopback) and pulls it back.
func TestBuildAndPush(t *testing.T) {
	// Generous: on a cold build cache this compiles every binary from
	// scratch (-trimpath keys a cache of its own) on a 2-core machine that
	// runs the other packages' race tests at the same time.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	built, err := Build(ctx, Config{ModuleDir: "../..", Repo: "registry.test/mesh", Version: "v1.2.3-test", OutDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(built) != len(Specs) {
		t.Fatalf("Build() made %d images, want %d", len(built), len(Specs))
	}
	for i, b := range built {
		s := Specs[i]
		t.Run(s.Name, func(t *testing.T) {
			if want := "registry.test/mesh/" + s.Name + ":v1.2.3-test"; b.Ref.String() != want {
				t.Errorf("ref = %s, want %s", b.Ref, want)
			}
			img, err := tarball.ImageFromPath(b.Archive, &b.Ref)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Config.User != s.User || strings.HasPrefix(cf.Config.User, "0") {
				t.Errorf("user = %q, want %q (not root)", cf.Config.User, s.User)
			}
			if want := "/usr/local/bin/" + s.binary(); len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != want {
				t.Errorf("entrypoint = %v, want [%s]", cf.Config.Entrypoint, want)
			}
			if cf.Config.Labels["org.opencontainers.image.version"] != "v1.2.3-test" {
				t.Errorf("labels = %v, want the version", cf.Config.Labels)
			}
			exe := fileInImage(t, img, "usr/local/bin/"+s.binary())
			// The node agent links no version (it reports none).
			if s.Name != "trellis-node" && !bytes.Contains(exe, []byte("v1.2.3-test")) {
				t.Error("the binary does not carry its tag as its version (istio_build would not say which build runs)")
			}
			f, err := elf.NewFile(bytes.NewReader(exe))
			if err != nil {
				t.Fatalf("the binary is not ELF: %v", err)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("the binary has a dynamic loader: it is not static")
				}
			}
		})
	}

	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	b := built[1]
	ref, err := name.NewTag(host+"/mesh/trellis-proxy:v1.2.3-test", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	b.Ref = ref
	if err := Push(ctx, b); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := b.Image.Digest()
	if got, _ := pulled.Digest(); got != want {
		t.Errorf("pulled digest %s, pushed %s", got, want)
	}
}

// fileInImage returns the content of path in img's filesystem.
func fileInImage(t *testing.T, img v1.Image, path string) []byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want one", len(layers), err)
	}
	fs := mutate.Extract(img)
	defer fs.Close()
	tr := tar.NewReader(fs)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s is not in the image: %v", path, err)
		}
		if h.Name == path {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
}
