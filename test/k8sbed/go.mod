// The Kubernetes test bed: builds and runs a real single-node cluster on
// this machine for Trellis's Kubernetes tests. Its own module, so that the
// main module never requires k8s.io/kubernetes; the components it builds
// are pinned in components/*/go.mod.
module github.com/trellis-mesh/trellis/test/k8sbed

go 1.26

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
