package meshtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
)

func id(t *testing.T, s string) identity.ID {
	t.Helper()
	v, err := identity.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func material(t *testing.T, a *ca.Authority, who identity.ID, ttl time.Duration, trust ...*ca.Authority) Material {
	t.Helper()
	svid, err := a.Issue(who, ttl)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, tr := range trust {
		for _, r := range tr.Bundle() {
			roots.AddCert(r)
		}
	}
	return Material{ID: who, Cert: svid.TLSCertificate(), Roots: roots}
}

// echoServer accepts mTLS connections and echoes lines; handshake errors go
// to errs.
func echoServer(t *testing.T, cfg *tls.Config) (addr string, errs <-chan error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan error, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.HandshakeContext(context.Background()); err != nil {
					select {
					case ch <- err:
					default:
					}
					return
				}
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// drain discards handshake errors of earlier cases (a client refusing the
// server shows up on the server side as a remote alert).
func drain(errs <-chan error) {
	time.Sleep(50 * time.Millisecond)
	for {
		select {
		case <-errs:
		default:
			return
		}
	}
}

func roundTrip(conn net.Conn) error {
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return errors.New("bad echo " + line)
	}
	return nil
}

func dial(addr string, cfg *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	return roundTrip(conn)
}

func TestPeerVerification(t *testing.T) {
	mesh, _ := ca.NewRoot("cluster.local", 0)
	foreign, _ := ca.NewRoot("other.org", 0)
	impostor, _ := ca.NewRoot("cluster.local", 0) // same trust domain, unknown root
	db := id(t, "spiffe://cluster.local/ns/db/sa/alpha")
	web := id(t, "spiffe://cluster.local/ns/web/sa/default")

	var server Store
	// The server also trusts the foreign root, so the trust-domain check is
	// what refuses foreign peers, not chain verification.
	server.Set(material(t, mesh, db, time.Hour, mesh, foreign))
	addr, serverErrs := echoServer(t, ServerConfig(&server, MemberOf("cluster.local")))

	past := mesh.WithClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
	tests := []struct {
		name       string
		client     Material
		expect     identity.ID
		wantClient string // substring of the client's error, "" for success
		wantServer string // substring of the server's handshake error
	}{
		{"mesh peer", material(t, mesh, web, time.Hour, mesh), db, "", ""},
		{"wrong trust domain", material(t, foreign, id(t, "spiffe://other.org/ns/web/sa/default"), time.Hour, mesh), db, "", "peer trust domain is not trusted"},
		{"expired certificate", material(t, past, web, time.Hour, mesh), db, "", "certificate has expired"},
		{"unknown CA", material(t, impostor, web, time.Hour, mesh), db, "", "certificate signed by unknown authority"},
		{"unexpected server identity", material(t, mesh, web, time.Hour, mesh), id(t, "spiffe://cluster.local/ns/db/sa/admin"), "peer is not the expected identity", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drain(serverErrs)
			var client Store
			client.Set(tt.client)
			err := dial(addr, ClientConfig(&client, Exactly(tt.expect)))
			switch {
			case tt.wantClient != "" && (err == nil || !strings.Contains(err.Error(), tt.wantClient)):
				t.Errorf("client error = %v, want %q", err, tt.wantClient)
			case tt.wantServer != "":
				select {
				case serr := <-serverErrs:
					if !strings.Contains(serr.Error(), tt.wantServer) {
						t.Errorf("server handshake error = %v, want %q", serr, tt.wantServer)
					}
				case <-time.After(2 * time.Second):
					t.Errorf("server accepted the peer (client error %v), want %q", err, tt.wantServer)
				}
			case tt.wantClient == "" && err != nil:
				t.Errorf("dial = %v, want success", err)
			}
		})
	}
	t.Run("no client certificate", func(t *testing.T) {
		drain(serverErrs)
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
		_ = dial(addr, cfg)
		select {
		case serr := <-serverErrs:
			if !strings.Contains(serr.Error(), "client didn't provide a certificate") && !errors.Is(serr, ErrNoPeerCert) {
				t.Errorf("server error = %v, want a missing-certificate refusal", serr)
			}
		case <-time.After(2 * time.Second):
			t.Error("server accepted a client without a certificate")
		}
	})
}

// Rotating both sides' certificates every 20 ms under continuous new
// connections fails nothing, and a connection opened before keeps working.
func TestRotationUnderLoad(t *testing.T) {
	mesh, _ := ca.NewRoot("cluster.local", 0)
	db := id(t, "spiffe://cluster.local/ns/db/sa/alpha")
	web := id(t, "spiffe://cluster.local/ns/web/sa/default")
	var server, client Store
	server.Set(material(t, mesh, db, time.Minute, mesh))
	client.Set(material(t, mesh, web, time.Minute, mesh))
	addr, _ := echoServer(t, ServerConfig(&server, MemberOf("cluster.local")))
	ccfg := ClientConfig(&client, Exactly(db))

	long, err := tls.Dial("tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	if err := roundTrip(long); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := dial(addr, ccfg); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	rotations := 0
	for tick := time.NewTicker(20 * time.Millisecond); ctx.Err() == nil; <-tick.C {
		server.Set(material(t, mesh, db, time.Minute, mesh))
		client.Set(material(t, mesh, web, time.Minute, mesh))
		rotations++
	}
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%d rotations: %d handshakes ok, %d failed (first: %v)", rotations, ok.Load(), failed.Load(), firstErr.Load())
	}
	if err := roundTrip(long); err != nil {
		t.Errorf("connection opened before the rotations: %v", err)
	}
	t.Logf("%d rotations, %d handshakes, none failed", rotations, ok.Load())
}
