#!/usr/bin/env bash
# The control plane's push benchmark: N simulated proxies (real gRPC
# streams, real certificates) against one `trellis control` process; one
# endpoint flips (or, with -change policy, an AuthorizationPolicy); change-to-ACK
# latency and RSS per proxy. Arguments go to
# bench/controlbench (default: -proxies 100,1000,5000 -flips 5).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/trellis ./cmd/trellis
echo "controlbench on $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3)"
exec go run ./bench/controlbench -trellis bin/trellis "$@"
