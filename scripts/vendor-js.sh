#!/usr/bin/env bash
# The dashboard's one third-party script, cytoscape (the graph drawing
# library Kiali uses too), is vendored under internal/dashboard/assets/vendor
# so that `go build` needs no npm. This script reproduces that file from the
# npm registry at the pinned version; with --check it fails when the
# committed copy differs (test.sh runs that).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.35.0
DEST=internal/dashboard/assets/vendor
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
echo "vendored cytoscape $VERSION into $DEST"
