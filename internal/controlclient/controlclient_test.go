package controlclient

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

const good = `{
  "version": "v1",
  "workload": {"namespace": "web", "name": "client", "identity": "spiffe://cluster.local/ns/web/sa/default"},
  "services": [{
    "namespace": "db", "name": "alpha", "vip": "10.201.0.1", "loadBalancing": "LOAD_BALANCING_ROUND_ROBIN",
    "ports": [{"port": 9080, "protocol": "PROTOCOL_GRPC", "name": "grpc",
      "endpoints": [{"address": "10.200.0.5", "port": 9080, "identity": "spiffe://cluster.local/ns/db/sa/alpha"}]}]
  }],
  "inbound": {"mode": "MTLS_MODE_STRICT"}
}`

func TestDecode(t *testing.T) {
	cfg, err := Decode([]byte(good), "cfg.json")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.GetServices()[0].GetPorts()[0]
	if p.GetProtocol() != meshpb.Protocol_PROTOCOL_GRPC || p.GetEndpoints()[0].GetPort() != 9080 ||
		cfg.GetInbound().GetMode() != meshpb.MTLSMode_MTLS_MODE_STRICT {
		t.Errorf("decoded config = %v", cfg)
	}
	bad := []struct{ edit, want string }{
		{`"version": "v1"`, `cfg.json: version is required`},
		{`"vip": "10.201.0.1"`, `cfg.json: services[0].vip "10.201.0.300" is not an IP address`},
		{`"address": "10.200.0.5", "port": 9080`, `cfg.json: services[0].ports[0].endpoints[0].port 0 is out of range`},
		{`"identity": "spiffe://cluster.local/ns/db/sa/alpha"`, `cfg.json: services[0].ports[0].endpoints[0].identity: parse SPIFFE ID`},
		{`"inbound"`, `cfg.json: not a ProxyConfig in protobuf JSON`},
	}
	replacements := map[string]string{
		`"version": "v1"`:                                     `"version": ""`,
		`"vip": "10.201.0.1"`:                                 `"vip": "10.201.0.300"`,
		`"address": "10.200.0.5", "port": 9080`:               `"address": "10.200.0.5", "port": 0`,
		`"identity": "spiffe://cluster.local/ns/db/sa/alpha"`: `"identity": "spiffe://cluster.local/ns//db"`,
		`"inbound"`: `"inbund"`,
	}
	for _, b := range bad {
		_, err := Decode([]byte(strings.Replace(good, b.edit, replacements[b.edit], 1)), "cfg.json")
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("Decode(with %s) error = %v, want %q", replacements[b.edit], err, b.want)
		}
	}
	route := `"routes": [{"kind": "HTTPRoute", "namespace": "db", "name": "r", "spec": {"rules": [{"backendRefs": "all"}]}}], "inbound"`
	if _, err := Decode([]byte(strings.Replace(good, `"inbound"`, route, 1)), "cfg.json"); err == nil ||
		!strings.Contains(err.Error(), "cfg.json: routes: HTTPRoute db/r: the spec does not decode") {
		t.Errorf("Decode(with a route whose spec does not decode) error = %v, want one naming it", err)
	}
	for policy, want := range map[string]string{
		`{"outlierDetection": {"consecutive5xx": 5}}`:                                                    "services[0].traffic_policy.outlier_detection.base_ejection_ms is 0",
		`{"outlierDetection": {"consecutive5xx": 5, "baseEjectionMs": 1000, "maxEjectionPercent": 101}}`: "max_ejection_percent 101 is above 100",
		`{"retryBudget": {"percent": 100.5}}`:                                                            "services[0].traffic_policy.retry_budget.percent 100.5 is not a percentage from 0 to 100",
		`{"retryBudget": {"percent": -1}}`:                                                               "retry_budget.percent -1 is not a percentage",
		`{"retryBudget": {"percent": "NaN"}}`:                                                            "retry_budget.percent NaN is not a percentage",
	} {
		edited := strings.Replace(good, `"loadBalancing"`, `"trafficPolicy": `+policy+`, "loadBalancing"`, 1)
		if _, err := Decode([]byte(edited), "cfg.json"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(with traffic policy %s) error = %v, want %q", policy, err, want)
		}
	}
}

func TestFileSourceKeepsLastGoodConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	write := func(s string) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(good)
	var mu sync.Mutex
	var versions []string
	var errs []error
	src := &FileSource{Path: path, Interval: 10 * time.Millisecond,
		OnUpdate: func(c *meshpb.ProxyConfig) { mu.Lock(); versions = append(versions, c.GetVersion()); mu.Unlock() },
		OnError:  func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (versions %v, errors %v)", what, versions, errs)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("the first config", func() bool { return len(versions) == 1 })
	write(`{"version": "v2", "workload": {"identity": "not-an-id"}}`)
	wait("the bad config's error", func() bool { return len(errs) == 1 })
	write(strings.Replace(good, `"v1"`, `"v3"`, 1))
	wait("the next good config", func() bool { return len(versions) == 2 })
	cancel()
	<-done
	if versions[0] != "v1" || versions[1] != "v3" {
		t.Errorf("delivered versions %v, want [v1 v3]: the bad v2 never delivered", versions)
	}
}

// Any input decodes to a config that validates, or to an error naming the
// file; never a panic. A config that decoded re-encodes and decodes the same.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{"version": "v", "services": [{"vip": "::1", "ports": [{"port": 65536}]}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Decode(data, "fuzz.json")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.json") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if err := Validate(cfg); err != nil {
			t.Fatalf("Decode accepted a config Validate refuses: %v", err)
		}
		again, err := protojson.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(again, "fuzz.json")
		if err != nil || !proto.Equal(back, cfg) {
			t.Fatalf("config does not round-trip: %v", err)
		}
	})
}
