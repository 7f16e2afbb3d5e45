package proxy

// h2spec (HTTP/2 conformance, github.com/summerwind/h2spec) against both
// HTTP/2 listeners of the proxy: the outbound side as the app reaches it
// (h2c with prior knowledge), and the inbound side as another sidecar
// reaches it (mutual TLS; a test-only relay presents the client
// certificate, which h2spec cannot). Every case must pass: where
// net/http's own server deviates (Go 1.26: repeated settings, connection-
// specific fields, a bad preface on a port that also serves HTTP/1.1),
// the guards in front of it do what the RFC says. scripts/test.sh installs
// h2spec.

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/meshtls"
)

func h2specBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(string(out[:len(out)-1]), "bin", "h2spec")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("h2spec is not installed (scripts/test.sh installs it)")
	}
	t.Skip("h2spec is not installed; scripts/test.sh installs it")
	return ""
}

func TestH2Spec(t *testing.T) {
	bin := h2specBinary(t)
	m := newTestMesh(t, 1)
	// The relay: plaintext from h2spec, mutual TLS with a mesh identity to
	// the inbound proxy.
	inbound := serve(t, func(c net.Conn) { m.inbounds[0].HandleConn(c, m.appPort) })
	cfg := meshtls.ClientConfig(m.client, meshtls.Exactly(m.serverID))
	cfg.NextProtos = []string{"h2"}
	relay := serve(t, func(c net.Conn) {
		defer c.Close()
		up, err := (&tls.Dialer{Config: cfg}).DialContext(context.Background(), "tcp", inbound)
		if err != nil {
			t.Errorf("relay: %v", err)
			return
		}
		defer up.Close()
		pipe(c, up)
	})
	for side, addr := range map[string]string{"outbound (h2c from the app)": m.appAddr, "inbound (mTLS from a sidecar)": relay} {
		t.Run(side, func(t *testing.T) {
			_, port, _ := net.SplitHostPort(addr)
			report := filepath.Join(t.TempDir(), "h2spec.xml")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, _ := exec.CommandContext(ctx, bin, "-h", "127.0.0.1", "-p", port, "-o", "5", "-j", report).CombinedOutput()
			sum := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindStringSubmatch(string(out))
			if sum == nil {
				t.Fatalf("h2spec printed no summary:\n%s", out)
			}
			t.Logf("h2spec: %s", sum[0])
			if total, _ := strconv.Atoi(sum[1]); total < 140 {
				t.Fatalf("h2spec ran %d cases, want the whole suite", total)
			}
			for name, err := range h2specFailures(t, report) {
				t.Errorf("h2spec case failed: %s:\n%s", name, err)
			}
		})
	}
}

// h2specFailures reads h2spec's JUnit report: failed case name -> why.
func h2specFailures(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Suites []struct {
			Cases []struct {
				Package string  `xml:"package,attr"`
				Name    string  `xml:"classname,attr"`
				Error   *string `xml:"error"`
				Failure *string `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &report); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	failed := map[string]string{}
	for _, s := range report.Suites {
		for _, c := range s.Cases {
			if c.Error != nil || c.Failure != nil {
				failed[c.Package+": "+c.Name] = strings.TrimSpace(deref(c.Error) + deref(c.Failure))
			}
		}
	}
	return failed
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
