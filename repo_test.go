package trellis

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os/exec"
	"path"
	"path/filepath"
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
	leaves := []string{"internal/identity", "internal/catalog", "internal/meshpb", "internal/rawio", "internal/proxy/h1", "internal/proxy/h2"}
	owners := map[string][]string{
		"github.com/google/nftables": {"internal/nft"},
		"k8s.io/client-go":           {"internal/discovery", "internal/kube", "internal/kubeclient", "internal/nodeagent", "cmd/trellis-node"},
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
	// Each binary links only what it runs. Deps is the whole transitive
	// dependency list: of each binary, and already of the packages the
	// proxy is built from.
	cli := []string{module + "/internal/cli", module + "/examples", "github.com/spf13/cobra", "github.com/chromedp"}
	binaries := []struct {
		pkgs      []string
		forbidden []string
	}{
		{[]string{"./cmd/trellis-proxy", "./internal/proxy", "./internal/meshtls", "./internal/balancer", "./internal/controlclient"},
			append([]string{module + "/internal/ca", module + "/internal/discovery", module + "/internal/push",
				module + "/internal/proxycfg", module + "/internal/localmesh", "k8s.io/client-go"}, cli...)},
		{[]string{"./cmd/trellis-node"},
			append([]string{module + "/internal/proxy", module + "/internal/controlplane", module + "/internal/dashboard",
				module + "/internal/localmesh", module + "/internal/ca"}, cli...)},
		{[]string{"./cmd/trellis-control"},
			append([]string{module + "/internal/proxy", module + "/internal/localmesh", module + "/internal/nodeagent"}, cli...)},
	}
	for _, b := range binaries {
		for _, pkg := range listPackages(t, b.pkgs...) {
			for _, d := range pkg.Deps {
				for _, f := range b.forbidden {
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%s depends on %s; it must not link it", pkg.ImportPath, d)
					}
				}
			}
		}
	}
}

// Every HTTP and gRPC server in the tree is built with explicit limits:
// Go's zero values have no header timeout, no idle timeout and 1 MB of
// headers. A server either has a write timeout or is a streaming
// data-plane server with HTTP/2 stream and buffer limits; the zero-value
// helpers (http.ListenAndServe, http.Serve) are not used at all; a gRPC
// server limits streams, handshake time and message size.
func TestEveryServerHasLimits(t *testing.T) {
	always := []string{"ReadHeaderTimeout", "IdleTimeout", "MaxHeaderBytes"}
	h2 := []string{"MaxConcurrentStreams", "MaxReceiveBufferPerConnection", "MaxReceiveBufferPerStream"}
	servers := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				name := selector(n.Fun)
				if name == "http.ListenAndServe" || name == "http.ListenAndServeTLS" || name == "http.Serve" || name == "http.ServeTLS" {
					t.Errorf("%s: %s serves with Go's zero-value server (no limits); build one with internal/safehttp", fset.Position(n.Pos()), name)
				}
				if name == "grpc.NewServer" {
					// grpc-go's defaults: no stream limit, no handshake timeout.
					var opts []string
					for _, a := range n.Args {
						if c, ok := a.(*ast.CallExpr); ok {
							opts = append(opts, selector(c.Fun))
						}
					}
					for _, want := range []string{"grpc.MaxConcurrentStreams", "grpc.ConnectionTimeout", "grpc.MaxRecvMsgSize"} {
						if !slices.Contains(opts, want) {
							t.Errorf("%s: grpc.NewServer without %s", fset.Position(n.Pos()), want)
						}
					}
				}
			case *ast.CompositeLit:
				if selector(n.Type) != "http.Server" {
					return true
				}
				servers++
				keys := literalKeys(n)
				for _, k := range always {
					if keys[k] == nil {
						t.Errorf("%s: http.Server without %s", fset.Position(n.Pos()), k)
					}
				}
				if keys["WriteTimeout"] != nil {
					return true
				}
				cfg, _ := keys["HTTP2"].(*ast.UnaryExpr)
				var h2keys map[string]ast.Expr
				if cfg != nil {
					if lit, ok := cfg.X.(*ast.CompositeLit); ok {
						h2keys = literalKeys(lit)
					}
				}
				for _, k := range h2 {
					if h2keys[k] == nil {
						t.Errorf("%s: http.Server with neither WriteTimeout nor HTTP2.%s", fset.Position(n.Pos()), k)
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if servers < 3 {
		t.Fatalf("found %d http.Server literals; the scan is broken", servers)
	}
}

func selector(e ast.Expr) string {
	if s, ok := e.(*ast.SelectorExpr); ok {
		if x, ok := s.X.(*ast.Ident); ok {
			return x.Name + "." + s.Sel.Name
		}
	}
	return ""
}

func literalKeys(lit *ast.CompositeLit) map[string]ast.Expr {
	keys := map[string]ast.Expr{}
	for _, el := range lit.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if id, ok := kv.Key.(*ast.Ident); ok {
				keys[id.Name] = kv.Value
			}
		}
	}
	return keys
}
