// Package version says which build of Trellis a binary is, from the
// version control information Go stamps into it. A leaf: install (the
// images' default tag) and telemetry (the proxy's istio_build) import it.
package version

import "runtime/debug"

// Tag is this binary's version in the images' tag form,
// v0.0.0-COMMIT[-dirty] (what `trellis images build` tags a checkout's
// images with), or "" when the binary carries no commit.
func Tag() string {
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
