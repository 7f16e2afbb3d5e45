package ca

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Root rotation phases, in the order Keeper walks them.
const (
	// PhaseStable: one root, which signs.
	PhaseStable = "stable"
	// PhasePrepared: a new root is in the trust bundle beside the old one;
	// the old one still signs.
	PhasePrepared = "prepared"
	// PhaseActivated: the new root signs; the old one stays in the bundle
	// until every certificate it signed has been replaced.
	PhaseActivated = "activated"
)

// Errors of root rotation.
var (
	ErrPhase    = errors.New("root rotation is not in the phase this step needs")
	ErrSupplied = errors.New("the CA was supplied by the operator (--ca-cert, --ca-key): rotate it by supplying the new one")
)

// More files in a CA directory.
const (
	bundleFile    = "trust-bundle.pem"
	nextCertFile  = "next-ca-cert.pem"
	nextKeyFile   = "next-ca-key.pem"
	activatedFile = "activated-at" // Unix seconds of Activate, while in PhaseActivated
	// crossFile holds the new root signed by the old one, from Prepare to
	// Finish: whoever still trusts only the old root (a pod injected
	// before the rotation that starts after its activation) verifies the
	// new root's certificates through it.
	crossFile = "cross-ca-cert.pem"
)

// Keeper holds a mesh's authority in a directory and walks root rotation
// through its three phases (Prepare, Activate, Finish), persisting each
// one, so a restart at any point resumes where rotation stood. Safe for
// concurrent use.
type Keeper struct {
	dir      string
	supplied bool

	mu          sync.Mutex
	cur         *Authority          // guarded by mu: signs, and carries the bundle
	next        *Authority          // guarded by mu: the new root, in PhasePrepared
	phase       string              // guarded by mu
	bundle      []*x509.Certificate // guarded by mu
	activatedAt time.Time           // guarded by mu: in PhaseActivated
	cross       *x509.Certificate   // guarded by mu: the new root signed by the old, during a rotation
}

// OpenKeeper loads the authority kept in dir, creating a root for
// trustDomain on first use. When supplied is not nil (an operator's root
// or intermediate), it signs instead, and dir only records the bundle.
func OpenKeeper(dir, trustDomain string, supplied *Authority) (*Keeper, error) {
	k := &Keeper{dir: dir, supplied: supplied != nil, phase: PhaseStable}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open CA directory: %w", err)
	}
	cur := supplied
	if cur == nil {
		var err error
		if cur, err = LoadOrCreate(dir, trustDomain); err != nil {
			return nil, err
		}
	}
	k.cur = cur
	k.bundle = cur.Bundle()
	if supplied == nil {
		if err := k.loadRotationLocked(trustDomain); err != nil {
			return nil, err
		}
	}
	k.cur = k.cur.withRoots(k.bundle)
	return k, k.saveBundleLocked()
}

// Reload reads the directory again, after another writer (a replica of
// the control plane on Kubernetes) replaced its files. A supplied
// authority has nothing to reload.
func (k *Keeper) Reload() error {
	if k.supplied {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	td := k.cur.trustDomain
	certPEM, err := os.ReadFile(filepath.Join(k.dir, certFile))
	if err != nil {
		return fmt.Errorf("reload CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(k.dir, keyFile))
	if err != nil {
		return fmt.Errorf("reload CA: %w", err)
	}
	cur, err := Load(certPEM, keyPEM, td)
	if err != nil {
		return fmt.Errorf("reload CA: %w", err)
	}
	k.cur, k.next, k.phase, k.activatedAt, k.bundle, k.cross = cur, nil, PhaseStable, time.Time{}, cur.Bundle(), nil
	if err := k.loadRotationLocked(td); err != nil {
		return err
	}
	k.cur = k.cur.withRoots(k.bundle)
	return nil
}

// loadRotationLocked reads the bundle, the cross-signed root and a
// prepared next root, if any.
func (k *Keeper) loadRotationLocked(trustDomain string) error {
	if data, err := os.ReadFile(filepath.Join(k.dir, crossFile)); err == nil {
		certs, err := parsePEMCerts(data)
		if err != nil || len(certs) != 1 {
			return fmt.Errorf("load the cross-signed root %s: want one certificate (%v)", crossFile, err)
		}
		k.cross = certs[0]
	}
	if data, err := os.ReadFile(filepath.Join(k.dir, bundleFile)); err == nil {
		certs, err := parsePEMCerts(data)
		if err != nil {
			return fmt.Errorf("load trust bundle: %w", err)
		}
		if len(certs) > 0 {
			k.bundle = certs
		}
	}
	certPEM, err := os.ReadFile(filepath.Join(k.dir, nextCertFile))
	if errors.Is(err, os.ErrNotExist) {
		if len(k.bundle) > 1 {
			k.phase = PhaseActivated
			if data, err := os.ReadFile(filepath.Join(k.dir, activatedFile)); err == nil {
				if sec, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil {
					k.activatedAt = time.Unix(sec, 0)
				}
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("load next root: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(k.dir, nextKeyFile))
	if err != nil {
		return fmt.Errorf("load next root: %w", err)
	}
	if k.next, err = Load(certPEM, keyPEM, trustDomain); err != nil {
		return err
	}
	k.phase = PhasePrepared
	if !containsCert(k.bundle, k.next.cert) {
		k.bundle = append(k.bundle, k.next.cert)
	}
	return nil
}

// Authority returns the authority that signs now, carrying the current
// trust bundle.
func (k *Keeper) Authority() *Authority {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Phase returns the rotation phase.
func (k *Keeper) Phase() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.phase
}

// Prepare starts a rotation: a new root joins the trust bundle; the old
// root keeps signing. Peers must have the new bundle before Activate.
func (k *Keeper) Prepare() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.supplied {
		return ErrSupplied
	}
	if k.phase != PhaseStable {
		return fmt.Errorf("prepare: %w (it is %s)", ErrPhase, k.phase)
	}
	next, err := NewRoot(k.cur.trustDomain, 0)
	if err != nil {
		return err
	}
	cross, err := crossSign(k.cur, next)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(k.dir, crossFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cross.Raw}), 0o644); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if err := next.saveAs(k.dir, nextCertFile, nextKeyFile); err != nil {
		return err
	}
	k.next, k.phase, k.cross = next, PhasePrepared, cross
	k.bundle = append(k.bundle, next.cert)
	k.cur = k.cur.withRoots(k.bundle)
	return k.saveBundleLocked()
}

// Activate makes the new root sign; both roots stay trusted. Certificates
// signed by the old root must be replaced before Finish.
func (k *Keeper) Activate() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.phase != PhasePrepared {
		return fmt.Errorf("activate: %w (it is %s)", ErrPhase, k.phase)
	}
	if err := k.next.saveAs(k.dir, certFile, keyFile); err != nil {
		return err
	}
	now := time.Now()
	if err := os.WriteFile(filepath.Join(k.dir, activatedFile), []byte(strconv.FormatInt(now.Unix(), 10)), 0o600); err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	_ = os.Remove(filepath.Join(k.dir, nextCertFile))
	_ = os.Remove(filepath.Join(k.dir, nextKeyFile))
	k.cur, k.next, k.phase, k.activatedAt = k.next.withRoots(k.bundle), nil, PhaseActivated, now
	return nil
}

// ActivatedAt is when the new root started signing, in PhaseActivated
// (zero otherwise): certificates issued before it come from the old root.
func (k *Keeper) ActivatedAt() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.activatedAt
}

// Finish drops every root but the signing one from the trust bundle.
func (k *Keeper) Finish() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.phase != PhaseActivated {
		return fmt.Errorf("finish: %w (it is %s)", ErrPhase, k.phase)
	}
	k.bundle = []*x509.Certificate{k.cur.rootCert()}
	k.cur, k.phase, k.activatedAt, k.cross = k.cur.withRoots(k.bundle), PhaseStable, time.Time{}, nil
	if err := k.saveBundleLocked(); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(k.dir, activatedFile))
	_ = os.Remove(filepath.Join(k.dir, crossFile))
	return nil
}

// ChainExtra is what to send after a certificate the signing root issued
// so that a peer trusting only the old root verifies it: the new root
// signed by the old one while a rotation is activated, nothing otherwise.
func (k *Keeper) ChainExtra() []*x509.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.phase != PhaseActivated || k.cross == nil {
		return nil
	}
	return []*x509.Certificate{k.cross}
}

// crossSign certifies next's root (its subject and key) under old's.
func crossSign(old, next *Authority) (*x509.Certificate, error) {
	n := next.cert
	notAfter := n.NotAfter
	if old.cert.NotAfter.Before(notAfter) {
		notAfter = old.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: n.Subject, SubjectKeyId: n.SubjectKeyId, URIs: n.URIs,
		NotBefore: n.NotBefore, NotAfter: notAfter,
		KeyUsage: n.KeyUsage, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, old.cert, n.PublicKey, old.signer)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the new root: %w", err)
	}
	return x509.ParseCertificate(der)
}

func (k *Keeper) saveBundleLocked() error {
	var data []byte
	for _, c := range k.bundle {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	tmp := filepath.Join(k.dir, bundleFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("save trust bundle: %w", err)
	}
	return os.Rename(tmp, filepath.Join(k.dir, bundleFile))
}

// BundlePath is where a Keeper keeps the trust bundle (PEM, world
// readable): what a proxy is started with to verify the control plane.
func BundlePath(dir string) string { return filepath.Join(dir, bundleFile) }

// Fingerprint is the hex SHA-256 of a certificate, as proxies report
// their issuer.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// SigningCert returns the certificate that signs leaves.
func (a *Authority) SigningCert() *x509.Certificate { return a.cert }

func (a *Authority) withRoots(roots []*x509.Certificate) *Authority {
	c := *a
	c.roots = append([]*x509.Certificate(nil), roots...)
	return &c
}

// rootCert is the root at the top of the signing chain: the signing
// certificate itself when it is a root.
func (a *Authority) rootCert() *x509.Certificate {
	if isSelfSigned(a.cert) {
		return a.cert
	}
	for _, r := range a.roots {
		if a.cert.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return a.roots[0]
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return certs, nil
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}
