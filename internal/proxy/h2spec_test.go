package proxy

// h2spec (HTTP/2 conformance, github.com/summerwind/h2spec) against both
// HTTP/2 listeners of the proxy: the outbound side as the app reaches it
// (h2c with prior knowledge), and the inbound side as another sidecar
// reaches it (mutual TLS; a test-only relay presents the client
// certificate, which h2spec cannot). Every case must pass: where
// net/http's own server deviates (Go 1.26: repeated settings, connection-
// specific fields, a bad preface on a port that also serves HTTP/1.1),
// the guards in front of it do what the RFC says. internal/h2spectest runs
// it.

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/trellis-mesh/trellis/internal/h2spectest"
	"github.com/trellis-mesh/trellis/internal/meshtls"
)

func TestH2Spec(t *testing.T) {
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
		t.Run(side, func(t *testing.T) { h2spectest.Run(t, addr) })
	}
}
