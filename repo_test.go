package trellis

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/trellis-mesh/trellis"

type goPackage struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string
	Deps       []string
}

// listPackages runs `go list -json` with args and decodes its stream.
func listPackages(t *testing.T, args ...string) []goPackage {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []goPackage
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestEveryPackageHasADoc(t *testing.T) {
	for _, p := range listPackages(t, "./...") {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package doc comment: say what it is and who imports it", p.ImportPath)
		}
	}
}

func TestNoGrabBagPackages(t *testing.T) {
	for _, p := range listPackages(t, "./...") {
		if slices.Contains([]string{"util", "utils", "common", "helpers", "misc"}, path.Base(p.ImportPath)) {
			t.Errorf("package %s: name packages for what they are, not util/common/helpers", p.ImportPath)
		}
	}
}

// The dependency rules: leaves import nothing of ours; heavy dependencies
// have one owner each; the proxy binary stays lean.
func TestDependencyRules(t *testing.T) {
	pkgs := listPackages(t, "./...")
	leaves := []string{"internal/identity", "internal/catalog", "internal/meshpb"}
	owners := map[string][]string{
		"github.com/google/nftables": {"internal/nft"},
		"k8s.io/client-go":           {"internal/discovery", "internal/kube"},
	}
	for _, p := range pkgs {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, imp := range p.Imports {
			if slices.Contains(leaves, rel) && strings.HasPrefix(imp, module+"/") {
				t.Errorf("%s is a leaf but imports %s", rel, imp)
			}
			for dep, allowed := range owners {
				if (imp == dep || strings.HasPrefix(imp, dep+"/")) && !slices.ContainsFunc(allowed, func(a string) bool {
					return rel == a || strings.HasPrefix(rel, a+"/")
				}) {
					t.Errorf("%s imports %s; only %v may", rel, imp, allowed)
				}
			}
		}
	}
	forbidden := []string{module + "/internal/ca", module + "/internal/discovery", module + "/internal/push",
		module + "/internal/proxycfg", "k8s.io/client-go"}
	// Deps is the whole transitive dependency list: of the proxy binary,
	// and already of the packages it is built from.
	proxySide := []string{"./internal/proxy", "./internal/meshtls", "./internal/balancer", "./internal/controlclient"}
	if _, err := os.Stat("cmd/trellis-proxy"); err == nil {
		proxySide = append(proxySide, "./cmd/trellis-proxy")
	}
	for _, bin := range listPackages(t, proxySide...) {
		for _, d := range bin.Deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s depends on %s; the proxy must not link it", bin.ImportPath, d)
				}
			}
		}
	}
}
