package proxy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// TestRunExitsWhenAPortIsTaken: a sidecar that cannot bind one of its
// ports says which and exits, rather than serving half or hanging with
// its config source running.
func TestRunExitsWhenAPortIsTaken(t *testing.T) {
	dir := t.TempDir()
	a, err := ca.NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := identity.Parse("spiffe://cluster.local/ns/web/sa/default")
	svid, err := a.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(svid.Key)
	write := func(name string, blocks ...*pem.Block) string {
		var data []byte
		for _, b := range blocks {
			data = append(data, pem.EncodeToMemory(b)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfgJSON, _ := protojson.Marshal(&meshpb.ProxyConfig{Version: "1", Workload: &meshpb.Workload{Identity: id.String(), Namespace: "web", Name: "web"}})
	cfgFile := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgFile, cfgJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := Config{ConfigFile: cfgFile,
		OutboundAddr: "127.0.0.1:0", InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		HealthAddr: taken.Addr().String(), AccessLog: "off"}
	cfg.Certs.Cert = write("cert.pem", &pem.Block{Type: "CERTIFICATE", Bytes: svid.Chain[0].Raw})
	cfg.Certs.Key = write("key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cfg.Certs.Bundle = write("bundle.pem", &pem.Block{Type: "CERTIFICATE", Bytes: a.Bundle()[0].Raw})

	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
			t.Errorf("Run() = %v, want an error naming %s", err, taken.Addr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run() neither served nor returned with its health port taken")
	}
}
