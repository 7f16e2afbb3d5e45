package ca

import (
	"crypto/x509"
	"testing"
	"time"
)

// Root rotation walks its phases in order, each persisted: a Keeper
// reopened after any step is where the step left it, and certificates of
// the old root verify until the last step.
func TestKeeperRotationPersists(t *testing.T) {
	dir := t.TempDir()
	k, err := OpenKeeper(dir, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	id := mustID(t, "spiffe://cluster.local/ns/db/sa/alpha")
	oldSVID, err := k.Authority().Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := k.Authority().SigningCert()
	verifies := func(k *Keeper, c *x509.Certificate) bool {
		pool := x509.NewCertPool()
		for _, r := range k.Authority().Bundle() {
			pool.AddCert(r)
		}
		_, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err == nil
	}
	reopen := func() *Keeper {
		t.Helper()
		k, err := OpenKeeper(dir, "cluster.local", nil)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if err := k.Activate(); err == nil {
		t.Error("Activate before Prepare succeeded")
	}
	for _, step := range []struct {
		name      string
		do        func(*Keeper) error
		phase     string
		bundle    int
		oldSigns  bool
		oldTrusts bool
	}{
		{"prepare", (*Keeper).Prepare, PhasePrepared, 2, true, true},
		{"activate", (*Keeper).Activate, PhaseActivated, 2, false, true},
		{"finish", (*Keeper).Finish, PhaseStable, 1, false, false},
	} {
		if err := step.do(k); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		k = reopen()
		if got := k.Phase(); got != step.phase {
			t.Errorf("after %s and a restart: phase %s, want %s", step.name, got, step.phase)
		}
		if got := len(k.Authority().Bundle()); got != step.bundle {
			t.Errorf("after %s: %d roots in the bundle, want %d", step.name, got, step.bundle)
		}
		if got := k.Authority().SigningCert().Equal(oldRoot); got != step.oldSigns {
			t.Errorf("after %s: old root signs = %v, want %v", step.name, got, step.oldSigns)
		}
		if got := verifies(k, oldSVID.Chain[0]); got != step.oldTrusts {
			t.Errorf("after %s: a certificate of the old root verifies = %v, want %v", step.name, got, step.oldTrusts)
		}
		if got := !k.ActivatedAt().IsZero(); got != (step.phase == PhaseActivated) {
			t.Errorf("after %s: ActivatedAt = %v", step.name, k.ActivatedAt())
		}
		newSVID, err := k.Authority().Issue(id, time.Hour)
		if err != nil || !verifies(k, newSVID.Chain[0]) {
			t.Errorf("after %s: a new certificate does not verify against the bundle: %v", step.name, err)
		}
	}
}

func TestKeeperRefusesRotatingASuppliedCA(t *testing.T) {
	supplied, err := NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	k, err := OpenKeeper(t.TempDir(), "cluster.local", supplied)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Prepare(); err == nil {
		t.Error("Prepare of an operator's CA succeeded")
	}
}

// TestKeeperReload: a keeper follows the rotation another writer (a
// control plane replica) stored in its directory.
func TestKeeperReload(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenKeeper(dir, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenKeeper(dir, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		do    func() error
		phase string
		roots int
	}{{a.Prepare, PhasePrepared, 2}, {a.Activate, PhaseActivated, 2}, {a.Finish, PhaseStable, 1}} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if err := b.Reload(); err != nil {
			t.Fatal(err)
		}
		if b.Phase() != step.phase || len(b.Authority().Bundle()) != step.roots ||
			!b.Authority().SigningCert().Equal(a.Authority().SigningCert()) {
			t.Errorf("after %s, the other keeper has phase %s with %d roots", step.phase, b.Phase(), len(b.Authority().Bundle()))
		}
	}
}

// A peer that trusts only the old root (a pod injected before the
// rotation, starting after its activation) verifies a certificate of the
// new root when it comes with ChainExtra, across a restart; after Finish
// there is nothing extra to send.
func TestKeeperCrossSignsTheNewRoot(t *testing.T) {
	dir := t.TempDir()
	k, err := OpenKeeper(dir, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	oldOnly := x509.NewCertPool()
	oldOnly.AddCert(k.Authority().SigningCert())
	if err := k.Prepare(); err != nil {
		t.Fatal(err)
	}
	if extra := k.ChainExtra(); extra != nil {
		t.Errorf("prepared (the old root signs): ChainExtra %d certificates, want none", len(extra))
	}
	if err := k.Activate(); err != nil {
		t.Fatal(err)
	}
	k, err = OpenKeeper(dir, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	newOnly := x509.NewCertPool()
	newOnly.AddCert(k.Authority().SigningCert())
	svid, err := k.Authority().IssueServing(mustID(t, "spiffe://cluster.local/ns/trellis-system/sa/trellis-control"), []string{"control.trellis"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Chain[0]
	verifies := func(roots *x509.CertPool, extra []*x509.Certificate) bool {
		inter := x509.NewCertPool()
		for _, c := range extra {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err == nil
	}
	extra := k.ChainExtra()
	if len(extra) != 1 {
		t.Fatalf("activated: ChainExtra %d certificates, want the cross-signed root", len(extra))
	}
	if verifies(oldOnly, nil) {
		t.Fatal("the new root's certificate verified against the old root alone without the cross-signed root: the test proves nothing")
	}
	if !verifies(oldOnly, extra) {
		t.Error("a peer trusting only the old root cannot verify the new root's certificate with ChainExtra")
	}
	if !verifies(newOnly, extra) {
		t.Error("a peer trusting only the new root cannot verify with ChainExtra sent along")
	}
	if err := k.Finish(); err != nil {
		t.Fatal(err)
	}
	if extra := k.ChainExtra(); extra != nil {
		t.Errorf("finished: ChainExtra %d certificates, want none", len(extra))
	}
	if k, err = OpenKeeper(dir, "cluster.local", nil); err != nil {
		t.Fatal(err)
	}
	if extra := k.ChainExtra(); extra != nil {
		t.Errorf("reopened after Finish: ChainExtra %d certificates, want none", len(extra))
	}
}
