package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/gateway-api/conformance/utils/echo"
)

// startServer runs an echo server on free ports of 127.0.0.1 until the
// test ends, and checks that it then stops cleanly.
func startServer(t *testing.T) *server {
	t.Helper()
	s, err := listen(serverConfig{HTTP: []int{0}, HTTPS: []int{0}, GRPC: []int{0}, TCP: []int{0},
		ListenHost: "127.0.0.1", CertFile: filepath.Join(t.TempDir(), "cert.crt"), KeyFile: filepath.Join(t.TempDir(), "cert.key"),
		Version: "v1", Cluster: "bed", Hostname: "echo-v1-7d9f-x2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run() = %v, want nil once stopped", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server still running 10s after it was stopped")
		}
	})
	return s
}

// client runs the client as the suite execs it (`client URL flags...`)
// and returns what it printed.
func client(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cfg, err := parseClientArgs(args)
	if err != nil {
		t.Fatalf("parseClientArgs(%q) = %v", args, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out strings.Builder
	err = runClient(ctx, cfg, &out)
	return out.String(), err
}

// batch splits a --count output as the suite's MeshPod.RequestBatch does
// (its parseMultipleResponses is unexported): at blank lines, keeping
// the parts with a Hostname or a StatusCode.
func batch(out string) []echo.Response {
	var rs []echo.Response
	for _, part := range strings.Split(out, "\n\n") {
		if r := echo.ParseResponse(strings.TrimSpace(part)); r.Hostname != "" || r.Code != "" {
			rs = append(rs, r)
		}
	}
	return rs
}

// seen is what the suite's parser reads from one output.
type seen struct {
	Code, Method, Protocol, Host, URL, Hostname, Port, Version, Cluster string
	XTest, ContentType                                                  string // a request and a response header
}

func seenIn(r echo.Response) seen {
	return seen{r.Code, r.Method, r.Protocol, r.Host, r.URL, r.Hostname, r.Port, r.Version, r.Cluster,
		strings.Join(r.RequestHeaders.Values("X-Test"), ","), r.ResponseHeaders.Get("Content-Type")}
}

func TestClientServer(t *testing.T) {
	s := startServer(t)
	port := func(ls []net.Listener) string { return strconv.Itoa(portOf(ls[0])) }
	httpURL, httpsURL := "http://127.0.0.1:"+port(s.http), "https://127.0.0.1:"+port(s.https)
	for _, tc := range []struct {
		name string
		args []string
		want seen
	}{
		{"http", []string{httpURL + "/v2/example?animal=whale", "--method=GET", "-H", "X-Test:hello", "-H", "Host:echo"},
			seen{"200", "GET", "HTTP/1.1", "echo", "/v2/example?animal=whale", "echo-v1-7d9f-x2", port(s.http), "v1", "bed", "hello", "application/text"}},
		{"raw path and method", []string{httpURL + "/a/../b//c", "--method=POST", "--header", "X-Test: two words"},
			seen{"200", "POST", "HTTP/1.1", "127.0.0.1:" + port(s.http), "/a/../b//c", "echo-v1-7d9f-x2", port(s.http), "v1", "bed", "two words", "application/text"}},
		{"https, self-signed", []string{httpsURL + "/", "-H", "Host:echo.example"},
			seen{"200", "GET", "HTTP/1.1", "echo.example", "/", "echo-v1-7d9f-x2", port(s.https), "v1", "bed", "", "application/text"}},
		{"grpc", []string{"grpc://127.0.0.1:" + port(s.grpc), "-H", "X-Test:hello", "-H", "Host:echo:7070"},
			seen{"200", "", "GRPC", "echo:7070", "", "echo-v1-7d9f-x2", port(s.grpc), "v1", "bed", "hello", "application/grpc+proto"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := client(t, tc.args...)
			if err != nil {
				t.Fatalf("client %q: %v", tc.args, err)
			}
			if got := seenIn(echo.ParseResponse(out)); got != tc.want {
				t.Errorf("client %q parses as\n%+v, want\n%+v\noutput:\n%s", tc.args, got, tc.want, out)
			}
		})
	}
}

func TestClientCount(t *testing.T) {
	s := startServer(t)
	for _, url := range []string{
		"http://127.0.0.1:" + strconv.Itoa(portOf(s.http[0])) + "/",
		"grpc://127.0.0.1:" + strconv.Itoa(portOf(s.grpc[0])),
	} {
		out, err := client(t, url, "--count=50")
		if err != nil {
			t.Fatalf("client %s --count=50: %v", url, err)
		}
		rs := batch(out)
		if len(rs) != 50 {
			t.Fatalf("client %s --count=50 gave %d responses, want 50; output:\n%s", url, len(rs), out)
		}
		for i, r := range rs {
			if r.Code != "200" || r.Hostname != "echo-v1-7d9f-x2" {
				t.Errorf("response %d: code %q, hostname %q; want 200, echo-v1-7d9f-x2", i, r.Code, r.Hostname)
			}
		}
	}
}

func TestClientDoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.org:8083/target", http.StatusFound)
	})
	mux.HandleFunc("/target", func(http.ResponseWriter, *http.Request) { followed.Add(1) })
	ts := httptest.NewServer(mux)
	defer ts.Close()
	out, err := client(t, ts.URL+"/redirect")
	if err != nil {
		t.Fatal(err)
	}
	r := echo.ParseResponse(out)
	if r.Code != "302" || r.ResponseHeaders.Get("Location") != "http://example.org:8083/target" || followed.Load() != 0 {
		t.Errorf("client %s/redirect: code %q, Location %q, followed %d times; want 302, http://example.org:8083/target, 0\n%s",
			ts.URL, r.Code, r.ResponseHeaders.Get("Location"), followed.Load(), out)
	}
}

func TestClientFails(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, url := range []string{"http://" + closed + "/", "grpc://" + closed, "ftp://" + closed} {
		if out, err := client(t, url, "--timeout=2s"); err == nil || out != "" {
			t.Errorf("client %s = %q, %v; want no output and an error", url, out, err)
		}
	}
}

func TestTCPEcho(t *testing.T) {
	s := startServer(t)
	c, err := net.DialTimeout("tcp", s.tcp[0].Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping\n" {
		t.Errorf("tcp echo = %q, %v; want %q", got, err, "ping\n")
	}
}

func TestRole(t *testing.T) {
	for _, tc := range []struct {
		argv       []string
		wantClient bool
		wantArgs   string
	}{
		{[]string{"/usr/local/bin/client", "http://echo/"}, true, "http://echo/"},
		{[]string{"/usr/local/bin/server", "--port=8080"}, false, "--port=8080"},
		{[]string{"gammaecho", "client", "http://echo/"}, true, "http://echo/"},
		{[]string{"gammaecho", "--port=8080"}, false, "--port=8080"},
	} {
		client, args := role(tc.argv)
		if client != tc.wantClient || strings.Join(args, " ") != tc.wantArgs {
			t.Errorf("role(%q) = %v, %q; want %v, %q", tc.argv, client, args, tc.wantClient, tc.wantArgs)
		}
	}
}

func TestParseServerArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // HTTP, HTTPS, GRPC, TCP
	}{
		// As the suite's manifests start the echo app.
		{[]string{"--tcp=9090", "--port=8080", "--grpc=7070", "--port=8443", "--tls=8443", "--crt=/cert.crt", "--key=/cert.key"},
			"[8080] [8443] [7070] [9090]"},
		{[]string{"--port=80,443", "--tls", "443"}, "[80] [443] [] []"},
		{nil, "[8080] [] [] []"},
	} {
		cfg, err := parseServerArgs(tc.args)
		if got := fmt.Sprint(cfg.HTTP, cfg.HTTPS, cfg.GRPC, cfg.TCP); err != nil || got != tc.want {
			t.Errorf("parseServerArgs(%q) ports = %s, %v; want %s", tc.args, got, err, tc.want)
		}
	}
}
