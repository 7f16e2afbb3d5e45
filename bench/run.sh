#!/usr/bin/env bash
# The proxy benchmark in one command: a Trellis sidecar pair against a
# direct connection, a HAProxy pair and an nginx pair (see
# bench/proxybench). Installs what it needs (Debian's haproxy and nginx,
# fortio and ghz at pinned versions), builds the proxy and the harness, and
# prints Markdown. Run as root; extra arguments go to the harness, e.g.
#   sudo bench/run.sh -duration 5s -workers 1
set -euo pipefail
cd "$(dirname "$0")/.."

FORTIO_MODULE=fortio.org/fortio@v1.66.2
GHZ_MODULE=github.com/bojand/ghz/cmd/ghz@v0.93.0

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: run as root (each arm runs in network namespaces of its own)" >&2
  exit 1
fi

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
command -v taskset >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

GOBIN=$(go env GOPATH)/bin
if ! go version -m "$GOBIN/fortio" 2>/dev/null | grep -qE "mod\s+fortio.org/fortio\s+v1.66.2"; then
  echo "== installing $FORTIO_MODULE" >&2
  go install "$FORTIO_MODULE"
fi
if ! go version -m "$GOBIN/ghz" 2>/dev/null | grep -qE "mod\s+github.com/bojand/ghz\s+v0.93.0"; then
  echo "== installing $GHZ_MODULE" >&2
  go install "$GHZ_MODULE"
fi

go build -o bin/trellis-proxy ./cmd/trellis-proxy
go build -o bin/proxybench ./bench/proxybench
PATH="$GOBIN:$PATH" exec bin/proxybench -proxy bin/trellis-proxy "$@"
