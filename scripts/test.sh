#!/usr/bin/env bash
# The whole Trellis test suite, as CI runs it (.ci/run calls this script).
# It installs what the suite needs when missing, checks that generated code
# is current, then runs go vet,
# staticcheck, a short fuzz smoke run of each parser, and go test -race over
# every package, short runs of the proxy benchmark (bench/run.sh: it must
# keep working; its figures are not checked here), and last the Kubernetes
# tier on a real single-node cluster (test/k8sbed). Run it as root:
# the network-namespace tests and the benchmark skip, saying so, without
# root.
set -euo pipefail
cd "$(dirname "$0")/.."

STATICCHECK_VERSION="(0.8.2)"
STATICCHECK_MODULE=honnef.co/go/tools/cmd/staticcheck@v0.8.2
PROTOC_GEN_GO_MODULE=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12 # = google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_MODULE=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0 # gRPC stubs of proto/trellis/v1
H2SPEC_MODULE=github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible # HTTP/2 conformance of the proxy
# Count-based, not a duration: Go 1.26's fuzz coordinator can fail a run
# with "context deadline exceeded" when a duration runs out mid-execution
# (golang/go#75804, fixed in Go 1.27).
FUZZTIME=${FUZZTIME:-5000x}

log() { printf '\n== %s\n' "$*"; }

# Debian packages: tools the tests use inside pods, the browser the
# dashboard test drives, the Prometheus server its Prometheus source is
# tested against.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v getent >/dev/null || missing+=(libc-bin)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/struct.proto ] || missing+=(libprotobuf-dev) # the well-known types proto/ imports
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run this script as root" >&2
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go tools at pinned versions.
GOBIN=$(go env GOPATH)/bin
if ! "$GOBIN/staticcheck" -version 2>/dev/null | grep -qF "$STATICCHECK_VERSION"; then
  log "installing $STATICCHECK_MODULE"
  go install "$STATICCHECK_MODULE"
fi

if ! "$GOBIN/protoc-gen-go" --version 2>/dev/null | grep -qF "v1.36.12"; then
  log "installing $PROTOC_GEN_GO_MODULE"
  go install "$PROTOC_GEN_GO_MODULE"
fi

if ! "$GOBIN/protoc-gen-go-grpc" --version 2>/dev/null | grep -qF "1.6.0"; then
  log "installing $PROTOC_GEN_GO_GRPC_MODULE"
  go install "$PROTOC_GEN_GO_GRPC_MODULE"
fi

if ! go version -m "$GOBIN/h2spec" 2>/dev/null | grep -qF "v2.2.1+incompatible"; then
  log "installing $H2SPEC_MODULE"
  go install "$H2SPEC_MODULE"
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "NOTE: not root: the network-namespace, nftables and end-to-end tests and the benchmark smoke run will skip. Run as root to run them." >&2
fi

log "generated code is current (go generate)"
PATH="$GOBIN:$PATH" go generate ./...
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- internal/meshpb examples/graphdb/graphpb)" ]; then
  git status --porcelain -- internal/meshpb examples/graphdb/graphpb >&2
  echo "generated code differs from what go generate makes: run go generate ./... and commit" >&2
  exit 1
fi

log "vendored dashboard script is the pinned cytoscape (scripts/vendor-js.sh reproduces it)"
scripts/vendor-js.sh --verify

log "go vet"
go vet ./...

log "staticcheck"
"$GOBIN/staticcheck" ./...

log "fuzz smoke ($FUZZTIME each)"
grep -rlE '^func Fuzz' --include='*_test.go' internal | sort | while read -r file; do
  for target in $(grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | sed 's/^func //'); do
    go test -run='^$' -fuzz="^$target\$" -fuzztime="$FUZZTIME" -timeout 5m "./$(dirname "$file")" || exit 1
  done
done

log "go test -race"
# The end-to-end package (internal/cli) runs on its own afterwards: its
# load tests hold 500 requests a second for minutes, which would starve the
# timing-sensitive balancing tests of other packages on a 2-core machine.
go test -race -shuffle=on -count=1 -timeout 20m $(go list ./... | grep -v '/internal/cli$')
go test -race -shuffle=on -count=1 -timeout 25m ./internal/cli

if [ "$(id -u)" -eq 0 ]; then
  log "benchmark smoke run (bench/run.sh with short phases; the figures are not checked)"
  bench/run.sh -duration 2s -rates 1000 -workers 1 -idle 100 -flood 1s
fi

log "control-plane benchmark smoke runs (bench/run-control.sh with 50 proxies, endpoint and policy changes; the figures are not checked)"
bench/run-control.sh -proxies 50 -flips 2
bench/run-control.sh -proxies 50 -flips 2 -change policy

# The Kubernetes tier: a real single-node cluster (test/k8sbed, its own
# module). Its components build once per version set into
# /var/cache/trellis-k8sbed (a cold build takes about 15 minutes on 2 cores).
log "Kubernetes test bed (test/k8sbed)"
if [ "$(id -u)" -eq 0 ]; then
  scripts/k8sbed.sh build
  (
    cd test/k8sbed
    go vet ./...
    "$GOBIN/staticcheck" ./...
    go test -count=1 -timeout 45m ./...
    # The Gateway API conformance suite's Mesh profile (GAMMA) on a bed
    # of its own: it needs more time than the package's run leaves it
    # (it skips there), and writes its report to
    # $TRELLIS_CONFORMANCE_REPORT (README.md in test/k8sbed).
    go test -count=1 -timeout 60m -run '^TestGAMMAConformance$' .
  )
else
  echo "NOTE: not root: the Kubernetes tier skips" >&2
fi
