#!/usr/bin/env bash
# The dashboard's one third-party script, cytoscape (the graph drawing
# library Kiali uses too), is vendored under internal/dashboard/assets/vendor
# so that `go build` needs no npm. This script reproduces that file from the
# npm registry at the pinned version. --verify (test.sh runs it; no npm
# needed) fails when the committed copy is not the one recorded here;
# --check compares it with a fresh download.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.35.0
SHA256=aa33b0103bbdb721aeb1506000cb6e056692400baba7264c552d000b09da01f2 # of dist/cytoscape.esm.min.mjs
DEST=internal/dashboard/assets/vendor
if [ "${1:-}" = "--verify" ]; then
  echo "$SHA256  $DEST/cytoscape.esm.min.mjs" | sha256sum --check --quiet || {
    echo "$DEST/cytoscape.esm.min.mjs is not cytoscape $VERSION as recorded: run scripts/vendor-js.sh and commit" >&2
    exit 1
  }
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "cytoscape@$VERSION" >/dev/null && tar xzf "cytoscape-$VERSION.tgz")
if [ "${1:-}" = "--check" ]; then
  cmp -s "$tmp/package/dist/cytoscape.esm.min.mjs" "$DEST/cytoscape.esm.min.mjs" || {
    echo "$DEST/cytoscape.esm.min.mjs is not cytoscape $VERSION from npm: run scripts/vendor-js.sh and commit" >&2
    exit 1
  }
  exit 0
fi
mkdir -p "$DEST"
cp "$tmp/package/dist/cytoscape.esm.min.mjs" "$DEST/"
cp "$tmp/package/LICENSE" "$DEST/cytoscape.LICENSE"
echo "vendored cytoscape $VERSION into $DEST; record its sha256 in this script:"
sha256sum "$DEST/cytoscape.esm.min.mjs"
