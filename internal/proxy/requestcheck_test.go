package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// rawRequest sends one request exactly as written and returns the status
// and body of the answer.
func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Paths reach the app normalised as Istio's default does, pinned here:
// dot segments resolved (also when percent-encoded), unreserved escapes
// decoded, encoded slashes and backslashes kept, "//" kept, fragments
// refused.
func TestPathsReachTheAppNormalised(t *testing.T) {
	m := newTestMeshApp(t, 1, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.RequestURI) })
	})
	for _, tc := range []struct{ sent, app string }{
		{"/a/b?x=1", "/a/b?x=1"},
		{"//a//b", "//a//b"},
		{"/a/../b", "/b"},
		{"/a/./b/.", "/a/b/"},
		{"/../../etc/passwd", "/etc/passwd"},
		{"/a%2Fb", "/a%2Fb"},
		{"/a%2fb", "/a%2Fb"},
		{"/a%5Cb", "/a%5Cb"},
		{"/%61%62c", "/abc"},
		{"/a/%2e%2E/b", "/b"},
		{"/a/..%2Fb", "/a/..%2Fb"},
		{"/a#frag", "400"},
	} {
		code, body := rawRequest(t, m.appAddr, "GET "+tc.sent+" HTTP/1.1\r\nHost: alpha.db\r\nConnection: close\r\n\r\n")
		got := body
		if code != http.StatusOK {
			got = fmt.Sprint(code)
		}
		if got != tc.app {
			t.Errorf("sent %s: the app saw %q (status %d, %q), want %q", tc.sent, got, code, body, tc.app)
		}
	}
}

// Too many header fields or too many header bytes get 431 and reach no app.
func TestOversizeHeadersAre431(t *testing.T) {
	m := newTestMesh(t, 1)
	metrics := telemetry.New("test")
	m.outbound.Metrics = metrics
	many := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "X-H%d: v\r\n", i)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, headers string
		want          int
	}{
		{"90 fields", many(90), http.StatusOK},
		{"101 fields", many(101), http.StatusRequestHeaderFieldsTooLarge},
		{"70 KiB of one field", "X-Big: " + strings.Repeat("a", 70<<10) + "\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		code, body := rawRequest(t, m.appAddr, "GET / HTTP/1.1\r\nHost: alpha.db\r\n"+tc.headers+"Connection: close\r\n\r\n")
		if code != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, code, body, tc.want)
		}
		if code == http.StatusOK && body != "alpha-0" {
			t.Errorf("%s: answered %q, want the app's answer", tc.name, body)
		}
	}
	// The proxy's own refusals are counted, both of them: the engine's
	// codec refuses the 70 KiB head itself (net/http's path refused it
	// before any handler saw it, uncounted).
	if n := scrapeWait(t, metrics, "istio_requests_total", []string{`response_code="431"`, `response_flags="DPE"`}, 2); n != 2 {
		t.Errorf("istio_requests_total{response_code=431,response_flags=DPE} = %v, want 2", n)
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "//a//b/.", "/%2e%2E/%2F", "/a%zz", "/a#b", "a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n, err := NormalizePath(p)
		if err != nil {
			return
		}
		if !strings.HasPrefix(n, "/") {
			t.Fatalf("normalizePath(%q) = %q, not absolute", p, n)
		}
		for _, seg := range strings.Split(n, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("normalizePath(%q) = %q keeps a dot segment", p, n)
			}
		}
		if again, err := NormalizePath(n); err != nil || again != n {
			t.Fatalf("normalizePath is not idempotent: %q -> %q -> %q, %v", p, n, again, err)
		}
	})
}

// A target that is not a path (a rootless "GET admin", CONNECT's
// authority form) has nothing for a path policy to match and is refused
// at the destination sidecar; OPTIONS * passes.
func TestTargetsWithoutAPathAreRefused(t *testing.T) {
	m := newTestMesh(t, 1)
	direct := fmt.Sprintf("%s:%d", m.endpoints[0].GetAddress(), m.endpoints[0].GetPort())
	for _, tc := range []struct {
		target string
		want   int
	}{
		{"GET admin", http.StatusBadRequest},
		{"GET http:admin", http.StatusBadRequest},
		{"CONNECT /public/../admin", http.StatusBadRequest},
		{"CONNECT alpha.db:443", http.StatusBadRequest},
		{"OPTIONS *", http.StatusOK},
		{"GET http://alpha.db/a/../b", http.StatusOK},
	} {
		if code, body := rawRequest(t, direct, tc.target+" HTTP/1.1\r\nHost: alpha.db\r\nConnection: close\r\n\r\n"); code != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.target, code, body, tc.want)
		}
	}
}
