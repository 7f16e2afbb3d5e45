// Package kubernetes holds the manifests of the reference walkthrough on
// a Kubernetes cluster, which `trellis demo --kubernetes` (internal/cli)
// applies: walkthrough.yaml (the graph database in namespace db and two
// client namespaces), policy.yaml (the "mesh members only"
// NetworkPolicy) and authz.yaml (the AuthorizationPolicy of test 4). They are plain files for `kubectl apply` as well; the
// README's Kubernetes section walks the same tests with kubectl.
package kubernetes

import _ "embed"

var (
	//go:embed walkthrough.yaml
	Walkthrough []byte
	//go:embed policy.yaml
	Policy []byte
	//go:embed authz.yaml
	Authz []byte
)
