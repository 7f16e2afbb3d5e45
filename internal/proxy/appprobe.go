package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// AppProbesEnv is where the injector leaves the app's probes for the
// sidecar to run (see AppProbe).
const AppProbesEnv = "TRELLIS_APP_PROBES"

// AppProbe is one of the app's Kubernetes probes, which the injector moved
// to the sidecar's health port (the kubelet's plaintext probes would not
// pass STRICT mTLS): the sidecar runs it against the app on 127.0.0.1 and
// answers with its outcome. The JSON shape is the injector's
// (inject.AppProbe).
type AppProbe struct {
	HTTPGet *struct {
		Path    string            `json:"path"`
		Port    int32             `json:"port"`
		HTTPS   bool              `json:"https"`
		Host    string            `json:"host"`
		Headers map[string]string `json:"headers"`
	} `json:"httpGet"`
	TCPPort        int32 `json:"tcpPort"`
	TimeoutSeconds int32 `json:"timeoutSeconds"`
}

// parseAppProbes reads the probes keyed by /app-health/CONTAINER/KIND.
func parseAppProbes(data string) (map[string]AppProbe, error) {
	if data == "" {
		return nil, nil
	}
	var m map[string]AppProbe
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		return nil, fmt.Errorf("%s: %v", AppProbesEnv, err)
	}
	for path, p := range m {
		port := p.TCPPort
		if p.HTTPGet != nil {
			port = p.HTTPGet.Port
		}
		if !strings.HasPrefix(path, "/app-health/") || port < 1 || port > 65535 || (p.HTTPGet != nil) == (p.TCPPort != 0) {
			return nil, fmt.Errorf("%s: probe %q needs one of httpGet and tcpPort with a port 1-65535", AppProbesEnv, path)
		}
	}
	return m, nil
}

// probeClient runs HTTP probes as the kubelet does: no keep-alive, no
// redirects followed (a 3xx is success), certificates not checked.
var probeClient = &http.Client{
	Transport:     &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // as the kubelet's probes
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// serveAppProbe runs p and reports its outcome: the app's status for an
// HTTP probe (the kubelet judges it), 200 or 503 for a TCP one.
func serveAppProbe(w http.ResponseWriter, r *http.Request, p AppProbe) {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if p.HTTPGet == nil {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p.TCPPort))))
		if err != nil {
			http.Error(w, "app probe: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		c.Close()
		return
	}
	g := p.HTTPGet
	scheme := "http"
	if g.HTTPS {
		scheme = "https"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(int(g.Port)))+path, nil)
	if err != nil {
		http.Error(w, "app probe: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	req.Header.Set("User-Agent", "kube-probe/trellis")
	for k, v := range g.Headers {
		req.Header.Set(k, v)
	}
	if g.Host != "" {
		req.Host = g.Host
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		http.Error(w, "app probe: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 10<<10)) // the kubelet keeps 10 KiB
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}
