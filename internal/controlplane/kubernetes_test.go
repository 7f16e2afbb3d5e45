package controlplane

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/push"
)

// A replica that learns of an activation from the CA Secret signed with
// the old root until then, possibly after the activation: it asks for
// every certificate issued up to now to be renewed, not only those issued
// before the activation.
func TestReloadAfterAnotherReplicaActivated(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	first, err := ca.OpenKeeper(a, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	copyDir(t, a, b)
	second, err := ca.OpenKeeper(b, "cluster.local", nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &plane{keeper: second, push: push.New(push.Config{TrustDomain: "cluster.local"})}
	if err := first.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := p.reloadCA(secretOf(t, a), b); err != nil {
		t.Fatal(err)
	}
	if p.renewBefore != 0 {
		t.Fatalf("prepared: renewBefore %d, want none", p.renewBefore)
	}
	if err := first.Activate(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the second replica polls the Secret later
	learnt := time.Now().Unix()
	if err := p.reloadCA(secretOf(t, a), b); err != nil {
		t.Fatal(err)
	}
	if at := first.ActivatedAt().Unix(); p.renewBefore < learnt+1 || p.renewBefore <= at+1 {
		t.Errorf("renewBefore %d: activated at %d, learnt at %d; a certificate the old root signed meanwhile would be kept", p.renewBefore, at, learnt)
	}
	// The demand stands through later reloads of the same rotation, and
	// ends with it.
	before := p.renewBefore
	if err := p.reloadCA(secretOf(t, a), b); err != nil {
		t.Fatal(err)
	}
	if p.renewBefore != before {
		t.Errorf("renewBefore %d after a second reload, want %d", p.renewBefore, before)
	}
	if err := first.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := p.reloadCA(secretOf(t, a), b); err != nil {
		t.Fatal(err)
	}
	if p.renewBefore != 0 {
		t.Errorf("renewBefore %d after the rotation finished, want none", p.renewBefore)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	sec := secretOf(t, from)
	for name, data := range sec.Data {
		if err := os.WriteFile(filepath.Join(to, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// secretOf is the CA Secret a replica stores from its directory.
func secretOf(t *testing.T, dir string) *corev1.Secret {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if data[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	return &corev1.Secret{Data: data}
}
