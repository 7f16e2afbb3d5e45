package cli

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// hello-server's endpoints for trying timeouts and retries answer as they
// say, and refuse what they cannot do with the form they take.
func TestHelloServerResilienceEndpoints(t *testing.T) {
	srv := httptest.NewServer(helloMux("hello-1"))
	defer srv.Close()
	get := func(path string) (int, string, time.Duration) {
		start := time.Now()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), time.Since(start)
	}
	if code, _, _ := get("/status/503"); code != 503 {
		t.Errorf("/status/503 = %d", code)
	}
	if code, body, took := get("/delay/200ms"); code != 200 || took < 200*time.Millisecond || !strings.Contains(body, "hello-1") {
		t.Errorf("/delay/200ms = %d %q after %v", code, body, took)
	}
	failed := 0
	for range 200 {
		if code, _, _ := get("/flaky/50"); code == 503 {
			failed++
		}
	}
	if failed < 60 || failed > 140 {
		t.Errorf("/flaky/50 failed %d of 200", failed)
	}
	for _, bad := range []string{"/status/99", "/status/x", "/delay/31s", "/delay/-1s", "/flaky/101"} {
		if code, body, _ := get(bad); code != 400 || !strings.Contains(body, "give") {
			t.Errorf("%s = %d %q, want 400 saying what to give", bad, code, body)
		}
	}
}
