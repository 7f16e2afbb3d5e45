package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

func mustID(t *testing.T, s string) identity.ID {
	t.Helper()
	id, err := identity.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIssueVerifies(t *testing.T) {
	a, err := NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	id := mustID(t, "spiffe://cluster.local/ns/db/sa/alpha")
	svid, err := a.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Chain[0]
	roots := x509.NewCertPool()
	roots.AddCert(a.Bundle()[0])
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf does not verify for %v: %v", usage, err)
		}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Errorf("leaf = URIs %v, CA %v, usage %v; want exactly %s, not a CA", leaf.URIs, leaf.IsCA, leaf.KeyUsage, id)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("leaf key = %T, want ECDSA P-256", leaf.PublicKey)
	}
	if d := time.Until(leaf.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Errorf("leaf lifetime left %s, want about 1h", d)
	}
}

func TestIssueRefuses(t *testing.T) {
	a, err := NewRoot("cluster.local", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(mustID(t, "spiffe://other.org/ns/db/sa/alpha"), time.Hour); !errors.Is(err, ErrTrustDomain) {
		t.Errorf("Issue(other trust domain) error = %v, want ErrTrustDomain", err)
	}
	if _, err := a.Issue(mustID(t, "spiffe://cluster.local/ns/db/sa/alpha"), 0); !errors.Is(err, ErrTTL) {
		t.Errorf("Issue(ttl 0) error = %v, want ErrTTL", err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	want := mustID(t, "spiffe://cluster.local/ns/db/sa/alpha")
	other, _ := url.Parse("spiffe://cluster.local/ns/db/sa/admin")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{other}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignCSR(csr, want, "", time.Hour); !errors.Is(err, ErrCSR) {
		t.Errorf("SignCSR(asks for another ID) error = %v, want ErrCSR", err)
	}
	csr, _ = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{want.URL()}}, key)
	chain, err := a.SignCSR(csr, want, "2f0c7c1e-pod-uid", time.Hour)
	if err != nil || chain[0].URIs[0].String() != want.String() {
		t.Fatalf("SignCSR(good) = %v, %v", chain, err)
	}
	if got := identity.PodOf(chain[0]); got != "2f0c7c1e-pod-uid" {
		t.Errorf("the certificate names pod %q, want the one it was issued to", got)
	}
}

func TestLoadOrCreatePersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := LoadOrCreate(dir, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", st.Mode(), err)
	}
	b, err := LoadOrCreate(dir, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Bundle()[0].Equal(b.Bundle()[0]) {
		t.Error("reloading the CA directory produced another root")
	}
	svid, err := b.Issue(mustID(t, "spiffe://cluster.local/ns/a/sa/b"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := svid.Chain[0].CheckSignatureFrom(a.Bundle()[0]); err != nil {
		t.Errorf("certificate from the reloaded CA does not chain to the first root: %v", err)
	}
}
