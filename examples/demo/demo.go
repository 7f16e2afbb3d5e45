// Package demo holds the manifests of the reference walkthrough that
// `trellis demo` (internal/cli) runs: mesh.yaml (the graph database in
// namespace db and two client namespaces) and policy.yaml (the "mesh
// members only" NetworkPolicy) and authz.yaml (the AuthorizationPolicy of
// test 4). They are plain files, usable with `trellis up -f` and
// `trellis apply -f` as well.
package demo

import _ "embed"

var (
	//go:embed mesh.yaml
	Mesh []byte
	//go:embed policy.yaml
	Policy []byte
	//go:embed authz.yaml
	Authz []byte
)
