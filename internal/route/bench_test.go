package route

import (
	"net/http"
	"testing"
)

// benchRequest is a request that goes through the canary table's
// precedence list to its catch-all weighted rule, matching a header on
// the way: the common path.
func benchRequest() *Request {
	h := http.Header{"X-Canary": {"sometimes"}, "User-Agent": {"bench"}}
	return &Request{Method: "GET", Host: "graph.db:8080", Path: "/api/v1/nodes/42", RawQuery: "depth=2",
		Header: func(name string) []string { return h[name] }}
}

// The common path allocates nothing.
func TestRouteDoesNotAllocate(t *testing.T) {
	tbl := fuzzTables(t)[0]
	r := benchRequest()
	var rnd uint64
	if n := testing.AllocsPerRun(1000, func() { rnd++; tbl.Route(r, rnd) }); n != 0 {
		t.Errorf("Route allocates %.1f times per request, want 0", n)
	}
	grpc := fuzzTables(t)[1]
	call := &Request{GRPC: true, Method: "POST", Path: "/trellis.graph.v1.Graph/WatchNodes", Header: r.Header}
	if n := testing.AllocsPerRun(1000, func() { rnd++; grpc.Route(call, rnd) }); n != 0 {
		t.Errorf("Route of a gRPC call allocates %.1f times per request, want 0", n)
	}
}

func BenchmarkRoute(b *testing.B) {
	tables := fuzzTables(b)
	for _, bc := range []struct {
		name string
		tbl  *Table
		req  *Request
	}{
		{"http-catchall", tables[0], benchRequest()},
		{"http-exact", tables[0], &Request{Method: "GET", Path: "/health"}},
		{"http-prefix-rewrite", tables[0], &Request{Method: "GET", Path: "/api/v0/nodes"}},
		{"grpc-regex", tables[1], &Request{GRPC: true, Method: "POST", Path: "/trellis.graph.v1.Graph/WatchNodes"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var rnd uint64
			for b.Loop() {
				rnd++
				bc.tbl.Route(bc.req, rnd)
			}
		})
	}
}
