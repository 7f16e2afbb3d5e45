// Package version says which build of Trellis a binary is, from the
// version control information Go stamps into it. A leaf: install (the
// images' default tag) and telemetry (the proxy's istio_build) import it.
package version

import "runtime/debug"

// stamp is the version a build was given (`trellis images build` sets it to
// the images' tag with -ldflags -X), which Tag prefers.
var stamp string

// Tag is this binary's version in the images' tag form: the tag
// `trellis images build` gave its image, else v0.0.0-COMMIT[-dirty] from
// the checkout it was built in, or "" when the binary carries neither.
func Tag() string {
	if stamp != "" {
		return stamp
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) < 12 {
		return ""
	}
	return "v0.0.0-" + rev[:12] + dirty
}
