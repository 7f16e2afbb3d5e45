package route

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The package stays pure: no I/O, no clock, no global randomness, so a
// Table decides the same way wherever it runs.
func TestPure(t *testing.T) {
	forbidden := []string{"os", "io", "io/fs", "net", "net/http", "syscall", "log", "log/slog", "math/rand", "math/rand/v2", "unsafe"}
	files, _ := filepath.Glob("*.go")
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); slices.Contains(forbidden, path) {
				t.Errorf("%s imports %s: the package is pure", file, path)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "time" && slices.Contains([]string{"Now", "Since", "Until", "Sleep", "After", "Tick", "NewTimer"}, sel.Sel.Name) {
					t.Errorf("%s calls time.%s: the package has no clock", file, sel.Sel.Name)
				}
			}
			return true
		})
	}
}
