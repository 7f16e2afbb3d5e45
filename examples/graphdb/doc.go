// Package graphdb is the demo's graph database: a data server ("alpha",
// HTTP on 8080 with /health and /query, gRPC on 9080 with CheckVersion
// and Load) that asks a coordinator ("zero", gRPC on 5080) for node IDs
// and a commit timestamp on every write, and the client calls `trellis
// demo` makes. Everything is in memory; the point is the traffic it makes,
// which the mesh secures, balances and draws.
//
// The trellis binary runs these as `trellis example graph-alpha`,
// `graph-zero` and `graph-client` (internal/cli); the manifests are in
// examples/demo.
package graphdb
