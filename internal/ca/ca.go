// Package ca is the certificate authority: the only holder of signing keys.
// It creates (or loads) a root for a trust domain and issues X.509 SVIDs:
// ECDSA P-256 leaf certificates whose only URI SAN is the workload's SPIFFE
// ID. The control plane and the one-host runtime import it; the proxy never
// does (it only receives certificates).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Errors the authority refuses with.
var (
	ErrTrustDomain = errors.New("identity is outside the authority's trust domain")
	ErrCSR         = errors.New("certificate request does not ask for exactly the identity being issued")
	ErrTTL         = errors.New("certificate lifetime must be positive")
)

// Authority issues SVIDs for one trust domain. Safe for concurrent use: its
// fields never change after construction.
type Authority struct {
	trustDomain string
	signer      crypto.Signer
	cert        *x509.Certificate   // the signing certificate
	roots       []*x509.Certificate // the trust bundle
	now         func() time.Time
}

// NewRoot creates an authority with a fresh self-signed root for
// trustDomain, valid for validity (10 years when zero).
func NewRoot(trustDomain string, validity time.Duration) (*Authority, error) {
	td, err := identity.Parse("spiffe://" + trustDomain)
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	if validity <= 0 {
		validity = 10 * 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Trellis"}, CommonName: "Trellis root CA for " + trustDomain},
		URIs:                  []*url.URL{td.URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{trustDomain: trustDomain, signer: key, cert: cert, roots: []*x509.Certificate{cert}, now: time.Now}, nil
}

// WithClock returns a copy of a that reads the time from now: for tests of
// expiry.
func (a *Authority) WithClock(now func() time.Time) *Authority {
	c := *a
	c.now = now
	return &c
}

// TrustDomain returns the authority's trust domain.
func (a *Authority) TrustDomain() string { return a.trustDomain }

// Bundle returns the roots peers should trust.
func (a *Authority) Bundle() []*x509.Certificate { return append([]*x509.Certificate(nil), a.roots...) }

// SVID is an issued identity: the certificate chain (leaf first) and, when
// the authority generated it, the private key.
type SVID struct {
	ID    identity.ID
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// TLSCertificate returns the SVID in the form crypto/tls serves.
func (s *SVID) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: s.Key, Leaf: s.Chain[0]}
	for _, cert := range s.Chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

// Issue generates a P-256 key and an SVID for id, valid for ttl.
func (a *Authority) Issue(id identity.ID, ttl time.Duration) (*SVID, error) {
	return a.IssueServing(id, nil, ttl)
}

// IssueServing is Issue with DNS names beside the SPIFFE ID, for a server
// that clients outside the mesh verify by name (the API server calling
// the injection webhook).
func (a *Authority) IssueServing(id identity.ID, dnsNames []string, ttl time.Duration) (*SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	chain, err := a.sign(key.Public(), id, "", ttl, dnsNames)
	if err != nil {
		return nil, err
	}
	return &SVID{ID: id, Chain: chain, Key: key}, nil
}

// SignCSR issues an SVID for id from a PKCS#10 request, which must be
// self-signed and ask for exactly id as its only URI SAN. The caller must
// already have established that the requester is id, running in the pod
// whose UID is pod. The certificate names that pod as its subject
// serialNumber (identity.PodOf), so peers can refuse it once the pod is
// deleted; an empty pod names none.
func (a *Authority) SignCSR(csrDER []byte, id identity.ID, pod string, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", id, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", id, err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("sign CSR for %s: %w", id, ErrCSR)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("sign CSR for %s: key must be ECDSA P-256", id)
	}
	return a.sign(csr.PublicKey, id, pod, ttl, nil)
}

func (a *Authority) sign(pub crypto.PublicKey, id identity.ID, pod string, ttl time.Duration, dnsNames []string) ([]*x509.Certificate, error) {
	if id.TrustDomain() != a.trustDomain {
		return nil, fmt.Errorf("issue %s: %w %s", id, ErrTrustDomain, a.trustDomain)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("issue %s: %w", id, ErrTTL)
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{SerialNumber: pod},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		NotBefore:             now.Add(-time.Minute), // clock skew between hosts
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(a.cert.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.signer)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chain := []*x509.Certificate{leaf}
	if !isSelfSigned(a.cert) {
		chain = append(chain, a.cert) // an intermediate travels with the leaf
	}
	return chain, nil
}

func isSelfSigned(c *x509.Certificate) bool { return c.CheckSignatureFrom(c) == nil }

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

// Files in a CA directory.
const (
	certFile = "ca-cert.pem"
	keyFile  = "ca-key.pem"
)

// LoadOrCreate loads the authority kept in dir, or creates one for
// trustDomain and writes it there (the key with mode 0600), so a mesh keeps
// its root across restarts.
func LoadOrCreate(dir, trustDomain string) (*Authority, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	if errors.Is(err, os.ErrNotExist) {
		a, err := NewRoot(trustDomain, 0)
		if err != nil {
			return nil, err
		}
		return a, a.save(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	return Load(certPEM, keyPEM, trustDomain)
}

// Load builds an authority from a PEM certificate (a root, or an
// intermediate followed by its chain up to the root) and its PEM key, as an
// operator supplies them.
func Load(certPEM, keyPEM []byte, trustDomain string) (*Authority, error) {
	certs, err := parsePEMCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	if len(certs) == 0 || !certs[0].IsCA {
		return nil, errors.New("load CA: the certificate file must start with a CA certificate")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("load CA: the key file holds no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("load CA key: not a signing key")
	}
	a := &Authority{trustDomain: trustDomain, signer: signer, cert: certs[0], now: time.Now}
	a.roots = []*x509.Certificate{certs[len(certs)-1]}
	return a, nil
}

func (a *Authority) save(dir string) error { return a.saveAs(dir, certFile, keyFile) }

// saveAs writes the signing certificate and its key (mode 0600) to dir.
func (a *Authority) saveAs(dir, certName, keyName string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.signer)
	if err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw}), 0o644)
}
