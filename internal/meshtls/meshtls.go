// Package meshtls builds the tls.Configs of mutual TLS between workloads:
// TLS 1.3 only, SPIFFE X.509 SVIDs, the peer's chain verified against the
// current trust bundle and its SPIFFE ID checked by an Authorizer.
// Certificates and bundles live in a Store and are swapped atomically, so
// rotation applies to new handshakes without touching open connections.
//
// The proxy imports it; so do tests and the control plane's own listeners.
package meshtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Material is what one side presents and trusts: its SVID and the roots it
// verifies peers against.
type Material struct {
	ID    identity.ID
	Cert  tls.Certificate // leaf first; Leaf set
	Roots *x509.CertPool
}

// Store holds the current Material, and the pods whose certificates are
// refused. The zero value is empty; handshakes fail until Set is called.
// Safe for concurrent use.
type Store struct {
	cur     atomic.Pointer[Material]
	revoked atomic.Pointer[map[string]struct{}]
}

// Set replaces the material for every later handshake.
func (s *Store) Set(m Material) { s.cur.Store(&m) }

// SetRevoked replaces the UIDs of deleted pods whose certificates every
// later handshake refuses (identity.PodOf names a certificate's pod).
func (s *Store) SetRevoked(podUIDs []string) {
	set := make(map[string]struct{}, len(podUIDs))
	for _, uid := range podUIDs {
		set[uid] = struct{}{}
	}
	s.revoked.Store(&set)
}

// revokedPod reports whether leaf was issued to a pod that was deleted.
func (s *Store) revokedPod(leaf *x509.Certificate) bool {
	set := s.revoked.Load()
	if set == nil {
		return false
	}
	uid := identity.PodOf(leaf)
	_, ok := (*set)[uid]
	return ok && uid != ""
}

// Current returns the material in use, or nil before the first Set.
func (s *Store) Current() *Material { return s.cur.Load() }

// Authorizer decides whether a peer whose certificate verified may be
// talked to. It returns nil to allow, or an error saying why not.
type Authorizer func(peer identity.ID) error

// Errors peers are refused with.
var (
	ErrNoMaterial     = errors.New("no certificate loaded yet")
	ErrNoPeerCert     = errors.New("peer presented no certificate")
	ErrPeerID         = errors.New("peer certificate must carry exactly one spiffe:// URI SAN")
	ErrTrustDomain    = errors.New("peer trust domain is not trusted")
	ErrUnexpectedPeer = errors.New("peer is not the expected identity")
	ErrRevoked        = errors.New("peer certificate was issued to a pod that has been deleted")
)

// MemberOf allows any identity of trustDomain.
func MemberOf(trustDomain string) Authorizer {
	return func(peer identity.ID) error {
		if peer.TrustDomain() != trustDomain {
			return fmt.Errorf("%w: %s is in %q, want %q", ErrTrustDomain, peer, peer.TrustDomain(), trustDomain)
		}
		return nil
	}
}

// Exactly allows only want.
func Exactly(want identity.ID) Authorizer {
	return func(peer identity.ID) error {
		if peer != want {
			return fmt.Errorf("%w: got %s, want %s", ErrUnexpectedPeer, peer, want)
		}
		return nil
	}
}

// ServerConfig accepts connections from peers with a valid SVID that auth
// allows. The caller may set NextProtos.
func ServerConfig(s *Store, auth Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: curves,
		ClientAuth:       tls.RequireAnyClientCert, // verified below, against the current bundle
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			m := s.Current()
			if m == nil {
				return nil, ErrNoMaterial
			}
			return &m.Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(s, auth, cs, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientConfig dials peers with a valid SVID that auth allows (usually
// Exactly the identity the destination should have).
func ClientConfig(s *Store, auth Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: curves,
		// Go's verification assumes DNS names; SPIFFE peers are verified in
		// VerifyConnection instead, against the current bundle.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m := s.Current()
			if m == nil {
				return nil, ErrNoMaterial
			}
			return &m.Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(s, auth, cs, x509.ExtKeyUsageServerAuth)
			return err
		},
	}
}

// curves: the hybrid post-quantum exchange first (recorded mesh traffic
// stays private later), then X25519 and P-256. Its extra handshake cost is
// paid once per pooled connection, not per request.
var curves = []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}

// PeerID returns the SPIFFE ID of a connection's verified peer.
func PeerID(cs tls.ConnectionState) (identity.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return identity.ID{}, ErrNoPeerCert
	}
	return idOf(cs.PeerCertificates[0])
}

func verifyPeer(s *Store, auth Authorizer, cs tls.ConnectionState, usage x509.ExtKeyUsage) (identity.ID, error) {
	m := s.Current()
	if m == nil {
		return identity.ID{}, ErrNoMaterial
	}
	if len(cs.PeerCertificates) == 0 {
		return identity.ID{}, ErrNoPeerCert
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: m.Roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: time.Now()}
	if _, err := leaf.Verify(opts); err != nil {
		return identity.ID{}, fmt.Errorf("verify peer certificate: %w", err)
	}
	id, err := idOf(leaf)
	if err != nil {
		return identity.ID{}, err
	}
	if s.revokedPod(leaf) {
		return id, fmt.Errorf("%w: %s, pod UID %s", ErrRevoked, id, identity.PodOf(leaf))
	}
	if err := auth(id); err != nil {
		return id, err
	}
	return id, nil
}

func idOf(leaf *x509.Certificate) (identity.ID, error) {
	if len(leaf.URIs) != 1 {
		return identity.ID{}, ErrPeerID
	}
	id, err := identity.FromURI(leaf.URIs[0])
	if err != nil {
		return identity.ID{}, fmt.Errorf("%w: %v", ErrPeerID, err)
	}
	return id, nil
}
