// Package install renders what `trellis install` puts into a cluster: the
// CRDs, the trellis-system namespace, least-privilege RBAC, the control
// plane's Deployment and Service, and the injection webhook's
// registration. It renders only; internal/kube applies.
package install

import (
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Values are the install's settings: -f FILE (YAML, these keys nested) and
// --set KEY=VALUE (these keys dotted).
type Values struct {
	Image struct {
		// Repository the three images are named in (REPO/trellis-proxy:TAG).
		Repository string `json:"repository"`
		// Tag of every image; default the CLI's own version.
		Tag string `json:"tag"`
		// PullPolicy: Always, IfNotPresent or Never.
		PullPolicy string `json:"pullPolicy"`
	} `json:"image"`
	ControlPlane struct {
		Replicas int32 `json:"replicas"`
	} `json:"controlPlane"`
	NodeAgent struct {
		// Enabled runs the node agent, which enforces NetworkPolicy; turn
		// it off where another engine (Calico, Cilium) does.
		Enabled bool `json:"enabled"`
	} `json:"nodeAgent"`
	// TrustDomain of the mesh's SPIFFE IDs.
	TrustDomain string `json:"trustDomain"`
	// Namespace Trellis runs in.
	Namespace string `json:"namespace"`
}

// settable are the keys --set takes.
var settable = []string{"image.repository", "image.tag", "image.pullPolicy", "controlPlane.replicas", "nodeAgent.enabled", "trustDomain", "namespace"}

// Defaults are the values of an install given nothing.
func Defaults() Values {
	var v Values
	v.Image.Repository = "trellis.local"
	v.Image.Tag = version()
	v.Image.PullPolicy = "IfNotPresent"
	v.ControlPlane.Replicas = 1
	v.NodeAgent.Enabled = true
	v.TrustDomain = "cluster.local"
	v.Namespace = "trellis-system"
	return v
}

// version is the CLI's own version in the images' tag form,
// v0.0.0-COMMIT[-dirty], or "" when the binary carries none.
func version() string {
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

// LoadFile merges a values file (YAML) into v; unknown keys are errors.
func (v *Values) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("values: %w", err)
	}
	if err := yaml.UnmarshalStrict(bytes.TrimSpace(data), v); err != nil {
		return fmt.Errorf("values file %s: %v (keys: %s)", path, err, strings.Join(settable, ", "))
	}
	return nil
}

// Set applies one --set KEY=VALUE.
func (v *Values) Set(kv string) error {
	key, val, ok := strings.Cut(kv, "=")
	if !ok {
		return fmt.Errorf("--set %q: write KEY=VALUE", kv)
	}
	switch key {
	case "image.repository":
		v.Image.Repository = val
	case "image.tag":
		v.Image.Tag = val
	case "image.pullPolicy":
		v.Image.PullPolicy = val
	case "controlPlane.replicas":
		n, err := strconv.ParseInt(val, 10, 32)
		if err != nil {
			return fmt.Errorf("--set controlPlane.replicas=%s: not a number", val)
		}
		v.ControlPlane.Replicas = int32(n)
	case "nodeAgent.enabled":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("--set nodeAgent.enabled=%s: use true or false", val)
		}
		v.NodeAgent.Enabled = b
	case "trustDomain":
		v.TrustDomain = val
	case "namespace":
		v.Namespace = val
	default:
		return fmt.Errorf("--set %s: unknown key; known keys: %s", key, strings.Join(settable, ", "))
	}
	return nil
}

// Check says what is wrong with v, naming the key to fix.
func (v *Values) Check() error {
	switch {
	case v.Image.Repository == "":
		return fmt.Errorf("image.repository is empty")
	case v.Image.Tag == "":
		return fmt.Errorf("image.tag is empty and this trellis binary carries no version: --set image.tag=TAG (the tag `trellis images build` printed)")
	case !slices.Contains([]string{"Always", "IfNotPresent", "Never"}, v.Image.PullPolicy):
		return fmt.Errorf("image.pullPolicy %q: use Always, IfNotPresent or Never", v.Image.PullPolicy)
	case v.ControlPlane.Replicas < 1 || v.ControlPlane.Replicas > 10:
		return fmt.Errorf("controlPlane.replicas %d: use 1 to 10", v.ControlPlane.Replicas)
	case v.TrustDomain == "" || strings.ContainsAny(v.TrustDomain, "/:@ "):
		return fmt.Errorf("trustDomain %q is not a trust domain name", v.TrustDomain)
	case v.Namespace == "":
		return fmt.Errorf("namespace is empty")
	}
	return nil
}

// image is the reference of one of the three images.
func (v *Values) image(name string) string {
	return v.Image.Repository + "/" + name + ":" + v.Image.Tag
}
