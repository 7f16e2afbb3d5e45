package cli_test

// Gateway API routes in one-host mode: a manifest's HTTPRoute reaches the
// client's sidecar through the control plane, and the sidecar splits and
// matches requests by it; so does an Istio VirtualService's fault.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const routedMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {trellis.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: client, labels: {trellis.io/inject: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello-v1, namespace: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello, version: v1}}
  template:
    metadata: {labels: {app: hello, version: v1}}
    spec:
      containers:
      - name: server
        command: [trellis, example, hello-server, --listen, ":8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello-v2, namespace: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello, version: v2}}
  template:
    metadata: {labels: {app: hello, version: v2}}
    spec:
      containers:
      - name: server
        command: [trellis, example, hello-server, --listen, ":8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: web}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: hello-v1, namespace: web}
spec:
  selector: {app: hello, version: v1}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: hello-v2, namespace: web}
spec:
  selector: {app: hello, version: v2}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello-canary, namespace: web}
spec:
  parentRefs: [{group: "", kind: Service, name: hello, port: 8080}]
  rules:
  - backendRefs:
    - {name: hello-v1, port: 8080, weight: 80}
    - {name: hello-v2, port: 8080, weight: 20}
  - matches: [{headers: [{name: x-canary, value: always}]}]
    backendRefs: [{name: hello-v2, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hello-v2-resilience, namespace: web}
spec:
  parentRefs: [{group: "", kind: Service, name: hello-v2, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: hello-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {codes: [503], attempts: 5}
    backendRefs: [{name: hello-v2, port: 8080}]
  - backendRefs: [{name: hello-v2, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello-v2, namespace: web}
spec:
  host: hello-v2
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
---
# A Service of its own for the VirtualService: an abort on a string
# prefix, requests with x-version: v2 to the DestinationRule's subset v2
# (the pods labelled version v2), every other request to the Service's
# pods.
apiVersion: v1
kind: Service
metadata: {name: hello-vs, namespace: web}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello-vs, namespace: web}
spec:
  hosts: [hello-vs]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: hello-vs}}]
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: hello-vs, subset: v2}}]
  - route: [{destination: {host: hello-vs}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello-vs, namespace: web}
spec:
  host: hello-vs
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: client}
spec:
  containers: [{name: shell, command: [sleep, infinity]}]
`

func TestRoutesInOneHostMode(t *testing.T) {
	m := newMesh(t)
	m.up(routedMesh)
	waitFor(t, "every pod ready", 60*time.Second, func() bool {
		for _, ns := range []string{"web", "client"} {
			for _, p := range m.pods(ns) {
				if !p.Ready {
					return false
				}
			}
		}
		return len(m.pods("web")) == 2 && len(m.pods("client")) == 1
	})
	if out := m.must("get", "httproutes", "-n", "web"); !strings.Contains(out, "hello-canary") || !strings.Contains(out, "True") {
		t.Errorf("trellis get httproutes -n web:\n%s\nwant hello-canary accepted", out)
	}
	// versions counts which version answered each of n requests sent on
	// one connection (curl reuses it for every URL of one invocation).
	url := "http://hello.web.svc.cluster.local:8080/"
	versions := func(n int, header string) map[string]int {
		out := m.exec("client", "client", fmt.Sprintf("curl -s -m 20 %s %s", header, strings.TrimSpace(strings.Repeat(url+" ", n))))
		got := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			switch {
			case strings.Contains(line, "hello-v1-"):
				got["v1"]++
			case strings.Contains(line, "hello-v2-"):
				got["v2"]++
			default:
				got[line]++
			}
		}
		return got
	}
	// The client's sidecar gets the route with its config: until then
	// x-canary requests go anywhere.
	waitFor(t, "x-canary requests to go to v2 only", 30*time.Second, func() bool {
		return versions(10, "-H 'x-canary: always'")["v2"] == 10
	})
	// trellis explain follows the route the request matches to the
	// endpoints of the backends it may go to.
	for _, c := range []struct {
		args       []string
		want, none string
	}{
		{nil, "HTTPRoute web/hello-canary rule 0 sends 80% to web/hello-v1:8080, 20% to web/hello-v2:8080", ""},
		{[]string{"-H", "x-canary: always"}, "HTTPRoute web/hello-canary rule 1 sends 100% to web/hello-v2:8080", "service web/hello-v1 port"},
	} {
		out := m.must(append([]string{"explain", "-n", "client", "client", url}, c.args...)...)
		if !strings.Contains(out, c.want) || !strings.Contains(out, "service web/hello-v2 port 8080 (http)") ||
			c.none != "" && strings.Contains(out, c.none) {
			t.Errorf("trellis explain %s %v:\n%s\nwant %q and hello-v2's endpoints%s", url, c.args, out, c.want, map[bool]string{true: ", not hello-v1's"}[c.none != ""])
		}
	}
	// The VirtualService's abort is answered by the client's sidecar (flag
	// FI) for its prefix, of the string ("/teapots" too); other paths
	// reach the app. Its config came with the route's.
	vs := "http://hello-vs.web.svc.cluster.local:8080"
	for _, path := range []string{"/teapot/brew", "/teapots"} {
		head := strings.ToLower(m.exec("client", "client", "curl -s -i -m 10 "+vs+path))
		if !strings.HasPrefix(head, "http/1.1 418 ") || !strings.Contains(head, "x-trellis-response-flags: fi\r\n") {
			t.Errorf("GET %s through hello-vs's VirtualService answered\n%s\nwant 418 with flag FI", path, head)
		}
	}
	if out := m.exec("client", "client", "curl -s -m 10 "+vs+"/tea "+vs+"/"); strings.Count(out, "hello from hello-v") != 2 {
		t.Errorf("GET /tea and / through hello-vs's VirtualService answered %q, want the app twice", out)
	}
	// x-version: v2 goes to the DestinationRule's subset v2 only: the pod
	// labelled version v2; trellis explain names the subset and shows its
	// one endpoint.
	subset := strings.TrimSpace(strings.Repeat(vs+"/ ", 30))
	if out := m.exec("client", "client", "curl -s -m 20 -H 'x-version: v2' "+subset); strings.Count(out, "hello from hello-v2-") != 30 {
		t.Errorf("30 requests with x-version: v2 through hello-vs's VirtualService answered %q, want hello-v2's pod every time", out)
	}
	if out := m.must("explain", "-n", "client", "client", vs+"/", "-H", "x-version: v2"); !strings.Contains(out, "VirtualService web/hello-vs rule 1 sends 100% to web/hello-vs:8080 subset v2") ||
		!strings.Contains(out, "service web/hello-vs port 8080 (http), p2c_peak_ewma over 1 endpoint(s)") {
		t.Errorf("trellis explain %s/ -H 'x-version: v2':\n%s\nwant rule 1 sending 100%% to subset v2, over its one endpoint", vs, out)
	}
	if out := m.must("get", "virtualservices", "-n", "web"); !strings.Contains(out, "hello-vs") || !strings.Contains(out, "True") || strings.Contains(out, "False") {
		t.Errorf("trellis get virtualservices -n web:\n%s\nwant hello-vs accepted", out)
	}
	const n = 400
	if got := versions(n, ""); got["v1"]+got["v2"] != n || got["v1"] < n*72/100 || got["v1"] > n*88/100 {
		t.Errorf("%d requests on one connection went %v, want v1 80 %% ± 8 points", n, got)
	}
	// hello-v2's own route: a timeout cuts /delay/3s at 300ms, and
	// retries hide /flaky/30's failures.
	v2 := "http://hello-v2.web.svc.cluster.local:8080"
	var cut string
	waitFor(t, "the timeout to cut a slow request", 30*time.Second, func() bool {
		cut = m.exec("client", "client", "curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total}' "+v2+"/delay/3s")
		return strings.HasPrefix(cut, "504 ")
	})
	var took float64
	if _, err := fmt.Sscanf(cut, "504 %g", &took); err != nil || took < 0.3 || took > 1 {
		t.Errorf("a request to /delay/3s ended %q, want 504 after the route's 300ms", cut)
	}
	const flaky = 50
	out := m.exec("client", "client", "curl -s -w '%{http_code}\\n'"+strings.Repeat(" -o /dev/null "+v2+"/flaky/30", flaky))
	if codes := strings.Fields(out); len(codes) != flaky || flaky-strings.Count(out, "200") > 1 {
		t.Errorf("%d requests to /flaky/30 with retries answered %q, want at most one failure", flaky, out)
	}
	// hello-v2's DestinationRule lets one request be in flight: of three
	// at once, two are refused by the client's sidecar.
	if out := m.must("get", "destinationrules", "-n", "web"); !strings.Contains(out, "max 1 request") {
		t.Errorf("trellis get destinationrules -n web:\n%s\nwant hello-v2's limit", out)
	}
	parallel := "curl -s -Z --parallel-immediate -w '%{http_code} %header{x-trellis-response-flags}\\n'" +
		strings.Repeat(" -o /dev/null "+v2+"/delay/200ms", 3)
	waitFor(t, "two of three requests at once refused (503 UO)", 30*time.Second, func() bool {
		out := m.exec("client", "client", parallel)
		return strings.Count(out, "503 UO") == 2 && strings.Count(out, "200 ") == 1
	})
}
