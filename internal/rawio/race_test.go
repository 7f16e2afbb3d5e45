//go:build race

package rawio

// raceBuild: the race detector's instrumentation allocates.
const raceBuild = true
