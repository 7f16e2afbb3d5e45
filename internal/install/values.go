// Package install renders what `trellis install` puts into a cluster: the
// CRDs, the trellis-system namespace, least-privilege RBAC, the control
// plane's Deployment and Service, and the injection webhook's
// registration. It renders only; internal/kube applies.
package install

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/version"
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
		// CertificateTTL is the lifetime of the workload certificates it
		// issues (sidecars renew at half life), 10s to 90 days.
		CertificateTTL string `json:"certificateTTL"`
	} `json:"controlPlane"`
	NodeAgent struct {
		// Enabled runs the node agent, which enforces NetworkPolicy; turn
		// it off where another engine (Calico, Cilium) does.
		Enabled bool `json:"enabled"`
		// CNIResults is the node's libcni result cache, where the agent
		// learns each pod's link to guard it (own MAC and IPv4 address
		// only, no IPv6, no broadcast); empty turns the guard off.
		CNIResults string `json:"cniResults"`
	} `json:"nodeAgent"`
	Prometheus struct {
		// Enabled deploys a Prometheus server (trellis-prometheus) that
		// scrapes every pod annotated prometheus.io/scrape (the sidecars,
		// the node agents, the control plane), and makes the dashboard
		// read it.
		Enabled bool `json:"enabled"`
		// Image of the Prometheus server.
		Image string `json:"image"`
		// ScrapeInterval, a duration of 1s to 5m.
		ScrapeInterval string `json:"scrapeInterval"`
	} `json:"prometheus"`
	Tracing struct {
		// Endpoint is where injected sidecars send spans over OTLP:
		// control-plane (the dashboard's traces and recent requests), a
		// collector's host:port (plaintext gRPC), or empty for nowhere.
		Endpoint string `json:"endpoint"`
		// Sampling is the percentage of requests traced, 0 to 100.
		Sampling float64 `json:"sampling"`
	} `json:"tracing"`
	// TrustDomain of the mesh's SPIFFE IDs.
	TrustDomain string `json:"trustDomain"`
	// Namespace Trellis runs in.
	Namespace string `json:"namespace"`
}

// settable are the keys --set takes.
var settable = []string{"image.repository", "image.tag", "image.pullPolicy", "controlPlane.replicas", "controlPlane.certificateTTL", "nodeAgent.enabled", "nodeAgent.cniResults",
	"prometheus.enabled", "prometheus.image", "prometheus.scrapeInterval", "tracing.endpoint", "tracing.sampling", "trustDomain", "namespace"}

// Defaults are the values of an install given nothing.
func Defaults() Values {
	var v Values
	v.Image.Repository = "trellis.local"
	v.Image.Tag = version.Tag()
	v.Image.PullPolicy = "IfNotPresent"
	v.ControlPlane.Replicas = 1
	v.ControlPlane.CertificateTTL = "24h"
	v.NodeAgent.Enabled = true
	v.NodeAgent.CNIResults = "/var/lib/cni/results"
	v.Prometheus.Image = "docker.io/prom/prometheus:v3.5.0"
	v.Prometheus.ScrapeInterval = "15s"
	v.Tracing.Endpoint = "control-plane"
	v.Tracing.Sampling = 1
	v.TrustDomain = "cluster.local"
	v.Namespace = "trellis-system"
	return v
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
	case "controlPlane.certificateTTL":
		v.ControlPlane.CertificateTTL = val
	case "nodeAgent.enabled", "prometheus.enabled":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("--set %s=%s: use true or false", key, val)
		}
		if key == "nodeAgent.enabled" {
			v.NodeAgent.Enabled = b
		} else {
			v.Prometheus.Enabled = b
		}
	case "nodeAgent.cniResults":
		v.NodeAgent.CNIResults = val
	case "prometheus.image":
		v.Prometheus.Image = val
	case "prometheus.scrapeInterval":
		v.Prometheus.ScrapeInterval = val
	case "tracing.endpoint":
		v.Tracing.Endpoint = val
	case "tracing.sampling":
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return fmt.Errorf("--set tracing.sampling=%s: not a number (a percentage, 0 to 100)", val)
		}
		v.Tracing.Sampling = f
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
	case v.Prometheus.Enabled && v.Prometheus.Image == "":
		return fmt.Errorf("prometheus.image is empty: give the Prometheus server's image")
	case v.Tracing.Sampling < 0 || v.Tracing.Sampling > 100:
		return fmt.Errorf("tracing.sampling %g: give a percentage, 0 to 100", v.Tracing.Sampling)
	case v.Tracing.Endpoint != "" && v.Tracing.Endpoint != "control-plane" && !validHostPort(v.Tracing.Endpoint):
		return fmt.Errorf("tracing.endpoint %q: give control-plane, a collector's host:port, or empty for nowhere", v.Tracing.Endpoint)
	}
	if d, err := time.ParseDuration(v.ControlPlane.CertificateTTL); err != nil || d < 10*time.Second || d > 90*24*time.Hour {
		return fmt.Errorf("controlPlane.certificateTTL %q: give a duration from 10s to 2160h (90 days), such as 24h", v.ControlPlane.CertificateTTL)
	}
	if c := v.NodeAgent.CNIResults; c != "" && (!strings.HasPrefix(c, "/") || path.Clean(c) != c || strings.ContainsAny(c, "\n\"'")) {
		return fmt.Errorf("nodeAgent.cniResults %q: give a clean absolute directory, such as /var/lib/cni/results, or empty to turn the guard off", c)
	}
	if d, err := time.ParseDuration(v.Prometheus.ScrapeInterval); err != nil || d < time.Second || d > 5*time.Minute || d%time.Second != 0 {
		return fmt.Errorf("prometheus.scrapeInterval %q: use whole seconds from 1s to 5m, such as 15s", v.Prometheus.ScrapeInterval)
	}
	return nil
}

func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	n, perr := strconv.Atoi(port)
	return err == nil && host != "" && perr == nil && n > 0 && n < 65536 && !strings.ContainsAny(host, " /@")
}

// image is the reference of one of the three images.
func (v *Values) image(name string) string {
	return v.Image.Repository + "/" + name + ":" + v.Image.Tag
}
