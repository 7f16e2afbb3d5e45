package route

import (
	"os"
	"testing"
)

// fuzzTables are tables with every kind of match and action, compiled
// from the golden testdata.
func fuzzTables(t testing.TB) []*Table {
	var out []*Table
	for _, f := range []struct {
		file string
		port int32
	}{{"testdata/canary.yaml", 8080}, {"testdata/grpc.yaml", 9090}, {"testdata/virtualservice.yaml", 8080}} {
		data, err := os.ReadFile(f.file)
		if err != nil {
			t.Fatal(err)
		}
		target := graphHTTP
		target.Port = f.port
		out = append(out, Compile(target, parse(t, string(data)), mesh))
	}
	return out
}

// Any request view gets a decision without a panic, and a decision that
// holds together: a local response has no backend, a forwarded request
// has one.
func FuzzRoute(f *testing.F) {
	f.Add(false, "GET", "http", "graph.db:8080", "/api/v0/nodes", "a=1", "x-canary", "always", uint64(7))
	f.Add(false, "GET", "", "[::1]:8080", "/old", "", "", "", uint64(0))
	f.Add(true, "POST", "", "graph", "/trellis.graph.v1.Graph/WatchNodes", "", "x-canary", "1", uint64(1<<63))
	f.Add(false, "GET", "https", "h", "/debug/x", "token=ops&token=x", "", "", uint64(99))
	f.Add(false, "", "", "", "", "%", "", "", uint64(0))
	tables := fuzzTables(f)
	f.Fuzz(func(t *testing.T, grpc bool, method, scheme, host, path, query, hname, hvalue string, rnd uint64) {
		r := &Request{GRPC: grpc, Method: method, Scheme: scheme, Host: host, Path: path, RawQuery: query,
			Header: func(name string) []string {
				if name == canonical(hname) {
					return []string{hvalue, hvalue}
				}
				return nil
			}}
		for _, tbl := range tables {
			d := tbl.Route(r, rnd)
			if !d.Routed {
				t.Fatalf("Route(%+v) not routed by a table with routes", r)
			}
			if (d.Status == 0) == (d.Backend == Backend{}) {
				t.Fatalf("Route(%+v) = status %d and backend %v: want exactly one", r, d.Status, d.Backend)
			}
			if d.Status >= 300 && d.Status < 400 && d.Location == "" {
				t.Fatalf("Route(%+v) = redirect %d without a Location", r, d.Status)
			}
		}
	})
}
