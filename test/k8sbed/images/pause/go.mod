// The bed's pause image: its own module, so the cache key of the bed's
// binaries does not change with the test module's dependencies.
module github.com/trellis-mesh/trellis/test/k8sbed/images/pause

go 1.26
