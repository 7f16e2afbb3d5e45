package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// AppProbe is one of the app's probes as the sidecar runs it: the JSON
// written to ProbesEnv, keyed by the path the kubelet now asks the
// sidecar (/app-health/CONTAINER/readyz|livez|startupz). The proxy reads
// the same shape (proxy.AppProbe); a test keeps the two in step.
type AppProbe struct {
	HTTPGet        *AppHTTPGet `json:"httpGet,omitempty"`
	TCPPort        int32       `json:"tcpPort,omitempty"`
	TimeoutSeconds int32       `json:"timeoutSeconds,omitempty"`
}

// AppHTTPGet is an HTTP probe of the app on 127.0.0.1.
type AppHTTPGet struct {
	Path    string            `json:"path,omitempty"`
	Port    int32             `json:"port"`
	HTTPS   bool              `json:"https,omitempty"`
	Host    string            `json:"host,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// rewriteProbes points the containers' HTTP and TCP probes at the sidecar's
// health port, which runs them against the app from inside the pod: under
// STRICT mTLS the kubelet's plaintext probes would be refused. Exec and
// gRPC probes are left alone (exec runs in the container; a gRPC probe
// is answered by the app through the inbound capture only under
// PERMISSIVE: exclude its port with excludeInboundPorts under STRICT).
func rewriteProbes(cs []corev1.Container) (map[string]AppProbe, error) {
	out := map[string]AppProbe{}
	for i := range cs {
		c := &cs[i]
		for _, p := range []struct {
			probe **corev1.Probe
			kind  string
		}{{&c.ReadinessProbe, "readyz"}, {&c.LivenessProbe, "livez"}, {&c.StartupProbe, "startupz"}} {
			pr := *p.probe
			if pr == nil || (pr.HTTPGet == nil && pr.TCPSocket == nil) {
				continue
			}
			ap := AppProbe{TimeoutSeconds: pr.TimeoutSeconds}
			if g := pr.HTTPGet; g != nil {
				port, err := containerPort(c, g.Port)
				if err != nil {
					return nil, err
				}
				ap.HTTPGet = &AppHTTPGet{Path: g.Path, Port: port, HTTPS: g.Scheme == corev1.URISchemeHTTPS, Host: g.Host}
				for _, h := range g.HTTPHeaders {
					if ap.HTTPGet.Headers == nil {
						ap.HTTPGet.Headers = map[string]string{}
					}
					ap.HTTPGet.Headers[h.Name] = h.Value
				}
			} else {
				port, err := containerPort(c, pr.TCPSocket.Port)
				if err != nil {
					return nil, err
				}
				ap.TCPPort = port
			}
			path := "/app-health/" + c.Name + "/" + p.kind
			out[path] = ap
			np := pr.DeepCopy()
			np.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(HealthPort)}}
			*p.probe = np
		}
	}
	return out, nil
}

// containerPort resolves a probe's port, by number or by the name of one
// of c's ports.
func containerPort(c *corev1.Container, p intstr.IntOrString) (int32, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("container %s: probe port %d is out of range 1-65535", c.Name, p.IntVal)
		}
		return p.IntVal, nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("container %s: probe port %q names none of its ports", c.Name, p.StrVal)
}
