package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAppProbes runs moved probes against a real app on 127.0.0.1: the
// app's status passes through (the kubelet judges it), headers reach the
// app, a closed TCP port is a 503, and bad probe JSON is an error naming
// the variable.
func TestAppProbes(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "1" {
			http.Error(w, "no probe header", http.StatusBadRequest)
			return
		}
		if r.URL.Path == "/sick" {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "fine")
	}))
	defer app.Close()
	appPort := app.Listener.Addr().(*net.TCPAddr).Port
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	probes, err := parseAppProbes(fmt.Sprintf(`{
		"/app-health/web/readyz": {"httpGet": {"path": "/ok", "port": %[1]d, "headers": {"X-Probe": "1"}}},
		"/app-health/web/livez": {"httpGet": {"path": "sick", "port": %[1]d, "headers": {"X-Probe": "1"}}},
		"/app-health/web/startupz": {"tcpPort": %[1]d},
		"/app-health/db/readyz": {"tcpPort": %[2]d, "timeoutSeconds": 1}}`, appPort, closedPort))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/app-health/web/readyz": 200, "/app-health/web/livez": 500, "/app-health/web/startupz": 200, "/app-health/db/readyz": 503,
	} {
		rec := httptest.NewRecorder()
		serveAppProbe(rec, httptest.NewRequest(http.MethodGet, path, nil), probes[path])
		if rec.Code != want {
			t.Errorf("%s: status %d (%s), want %d", path, rec.Code, strings.TrimSpace(rec.Body.String()), want)
		}
	}
	for _, bad := range []string{`{`, `{"/app-health/x/readyz": {}}`, `{"/other": {"tcpPort": 80}}`, `{"/app-health/x/readyz": {"tcpPort": 70000}}`} {
		if _, err := parseAppProbes(bad); err == nil || !strings.Contains(err.Error(), AppProbesEnv) {
			t.Errorf("parseAppProbes(%s) = %v, want an error naming %s", bad, err, AppProbesEnv)
		}
	}
}
