package route

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Each testdata/*.yaml compiles to the table printed in its .golden file,
// followed by the routes' status. Run with -update after a deliberate
// change, and read the diff.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			rs := parse(t, string(data))
			target := graphHTTP
			if name == "grpc" {
				target.Port = 9090
			}
			got := Compile(target, rs, mesh).String() + "\n" + statusText(Validate(rs, mesh))
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s compiles to\n%s\nwant (%s)\n%s", file, got, golden, want)
			}
		})
	}
}

func statusText(st []Status) string {
	var b strings.Builder
	for _, s := range st {
		for i, p := range s.Parents {
			b.WriteString(s.Route.String() + " parentRefs[" + strconv.Itoa(i) + "]:\n")
			for _, c := range p.Conditions {
				b.WriteString("   " + c.Type + " " + string(c.Status) + " " + c.Reason + ": " + c.Message + "\n")
			}
		}
	}
	return b.String()
}
