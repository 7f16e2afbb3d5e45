package proxy

import "github.com/trellis-mesh/trellis/internal/proxy/h2"

// appBudgets bound what one of an app's own HTTP/2 connections may send
// each second (h2.Budgets), generous for real clients: a browser cancels
// a few streams; gRPC keepalive pings every few seconds and its bandwidth
// estimator more (each request earns two PINGs, and a PING after DATA is
// free). Header bytes count as they decode, so an HPACK bomb (blocks cheap
// on the wire, each byte a reference to a large table entry) pays for
// what it makes the proxy handle: 16 MiB is 35 000 requests a second of
// the 450 bytes a sidecar's request decodes to, more than one
// connection's share of a core.
var appBudgets = h2.Budgets{Resets: 1000, Settings: 100, Pings: 100, HeaderBytes: 16 << 20}

// peerBudgets apply to another sidecar's pooled connection, which carries
// the requests, cancellations and headers of every app connection behind
// it: resets get sixteen times an app connection's room, header bytes
// four times (at 16 MiB the pair's mesh connection of BenchmarkPairHTTP1
// was cut as a flood at 37 000 requests a second).
var peerBudgets = h2.Budgets{Resets: 16000, Settings: 100, Pings: 100, HeaderBytes: 64 << 20}
