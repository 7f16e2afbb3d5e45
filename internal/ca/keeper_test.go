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
