package meshtls

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
)

func writeSVID(t *testing.T, f Files, a *ca.Authority, svid *ca.SVID) {
	t.Helper()
	var chain []byte
	for _, c := range svid.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.Key)
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, r := range a.Bundle() {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	for path, data := range map[string][]byte{f.Cert: chain, f.Key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), f.Bundle: bundle} {
		if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatchFilesRotates(t *testing.T) {
	dir := t.TempDir()
	f := Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), Bundle: filepath.Join(dir, "bundle.pem")}
	a, _ := ca.NewRoot("cluster.local", 0)
	who := id(t, "spiffe://cluster.local/ns/web/sa/default")
	first, _ := a.Issue(who, time.Hour)
	writeSVID(t, f, a, first)

	var store Store
	errs := make(chan error, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- f.Watch(ctx, &store, 10*time.Millisecond, func(err error) {
			select {
			case errs <- err:
			default:
			}
		})
	}()
	waitStore := func(serial string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			if m := store.Current(); m != nil && m.Cert.Leaf.SerialNumber.String() == serial {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("store never held certificate %s", serial)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitStore(first.Chain[0].SerialNumber.String())
	if got := store.Current().ID; got != who {
		t.Errorf("loaded ID = %s, want %s", got, who)
	}

	// A broken key file is reported and the old material stays.
	if err := os.WriteFile(f.Key, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-errs:
	case <-time.After(2 * time.Second):
		t.Fatal("a broken key file was not reported")
	}
	waitStore(first.Chain[0].SerialNumber.String())

	second, _ := a.Issue(who, time.Hour)
	writeSVID(t, f, a, second)
	waitStore(second.Chain[0].SerialNumber.String())
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch() = %v, want nil after a good load", err)
	}
}

func TestLoadRefusesMismatchedKey(t *testing.T) {
	dir := t.TempDir()
	f := Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), Bundle: filepath.Join(dir, "bundle.pem")}
	a, _ := ca.NewRoot("cluster.local", 0)
	one, _ := a.Issue(id(t, "spiffe://cluster.local/ns/a/sa/b"), time.Hour)
	two, _ := a.Issue(id(t, "spiffe://cluster.local/ns/a/sa/b"), time.Hour)
	writeSVID(t, f, a, one)
	key, _ := x509.MarshalPKCS8PrivateKey(two.Key)
	if err := os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(); err == nil {
		t.Error("Load() with another certificate's key succeeded")
	}
}
