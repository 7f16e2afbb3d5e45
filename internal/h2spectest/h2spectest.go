// Package h2spectest runs h2spec, the HTTP/2 conformance suite
// (github.com/summerwind/h2spec), against a server and fails the test for
// every case that does not pass. Imported only by _test files;
// scripts/test.sh installs h2spec, and in CI a missing binary fails the
// test instead of skipping it.
package h2spectest

import (
	"bytes"
	"context"
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
)

// Run runs the whole suite against the plaintext HTTP/2 server at addr
// (host:port on loopback) and reports each failed case.
func Run(t *testing.T, addr string) {
	t.Helper()
	bin := binary(t)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
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
	for name, why := range failures(t, report) {
		t.Errorf("h2spec case failed: %s:\n%s", name, why)
	}
}

func binary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "h2spec")
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

// failures reads h2spec's JUnit report: failed case name -> why.
func failures(t *testing.T, path string) map[string]string {
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
	// Cases quote the frames they got, which may hold any byte: drop
	// those XML cannot carry.
	data = bytes.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return -1
		}
		return r
	}, data)
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
