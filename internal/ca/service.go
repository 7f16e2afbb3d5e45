package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// ErrNotReady is what an Attestor wraps when it cannot decide yet (the
// mesh's state is not loaded): the caller gets UNAVAILABLE and retries.
var ErrNotReady = errors.New("the control plane has not loaded the mesh yet; retry")

// MaxCSRBytes bounds a certificate request.
const MaxCSRBytes = 8 << 10

// Attestor checks a bootstrap token: that it was given to pod
// namespace/name, which runs as want, and has not been spent; then it
// spends it, so it never works again, and returns the pod's UID (which
// the certificate will name). Nothing is spent on refusal. csrKey is the
// SHA-256 of the request's public key, so an attestor may let the same key
// retry after a lost answer. Errors are the reason the caller is refused.
// Called on gRPC's goroutines, concurrently.
type Attestor interface {
	Attest(ctx context.Context, token, namespace, name string, want identity.ID, csrKey string) (podUID string, err error)
}

// Service serves CertificateService: it signs CSRs for callers that proved
// the identity they ask for.
type Service struct {
	meshpb.UnimplementedCertificateServiceServer
	Keeper   *Keeper
	Attestor Attestor
	// TTL is the lifetime of issued certificates. Default 24 h.
	TTL time.Duration
	// Reserved are identities never issued to a caller, however proven
	// (the control plane's own).
	Reserved []identity.ID
	// Runs, when set, says whether the pod a certificate names (by UID;
	// empty for a certificate that names none) still runs as id: a
	// renewal (proven by the current certificate) is refused once that
	// pod is gone, so a certificate taken from a deleted pod dies with its
	// expiry at the latest.
	Runs func(id identity.ID, podUID string) error
	// OnIssue and OnRefuse, when set, observe each outcome (metrics, logs).
	OnIssue  func(id identity.ID)
	OnRefuse func(reason string, err error)
}

var _ meshpb.CertificateServiceServer = (*Service)(nil)

// Sign implements CertificateService.Sign (see control.proto).
func (s *Service) Sign(ctx context.Context, req *meshpb.SignRequest) (*meshpb.SignResponse, error) {
	csr, id, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, s.refuse("bad_csr", status.Error(codes.InvalidArgument, err.Error()))
	}
	if slices.Contains(s.Reserved, id) {
		return nil, s.refuse("not_proven", status.Errorf(codes.PermissionDenied, "%s is reserved for Trellis itself and never issued to a workload", id))
	}
	pod, err := s.prove(ctx, req, csr, id)
	if err != nil {
		if errors.Is(err, ErrNotReady) {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		return nil, s.refuse("not_proven", status.Error(codes.PermissionDenied, err.Error()))
	}
	auth := s.Keeper.Authority()
	ttl := s.TTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	chain, err := auth.SignCSR(req.GetCsr(), id, pod, ttl)
	if err != nil {
		return nil, s.refuse("sign", status.Error(codes.InvalidArgument, err.Error()))
	}
	if s.OnIssue != nil {
		s.OnIssue(id)
	}
	resp := &meshpb.SignResponse{}
	for _, c := range chain {
		resp.Chain = append(resp.Chain, c.Raw)
	}
	for _, c := range auth.Bundle() {
		resp.TrustBundle = append(resp.TrustBundle, c.Raw)
	}
	return resp, nil
}

func (s *Service) refuse(reason string, err error) error {
	if s.OnRefuse != nil {
		s.OnRefuse(reason, err)
	}
	return err
}

// parseCSR checks what can be checked without knowing the caller.
func parseCSR(der []byte) (*x509.CertificateRequest, identity.ID, error) {
	switch {
	case len(der) == 0:
		return nil, identity.ID{}, errors.New("csr is empty: send a PKCS#10 request in DER")
	case len(der) > MaxCSRBytes:
		return nil, identity.ID{}, fmt.Errorf("csr is %d bytes, more than %d", len(der), MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("csr is not a PKCS#10 request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, identity.ID{}, fmt.Errorf("csr signature: %v", err)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, identity.ID{}, errors.New("csr key must be ECDSA P-256")
	}
	if len(csr.URIs) != 1 || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, identity.ID{}, errors.New("csr must name exactly one SPIFFE ID as its only SAN")
	}
	id, err := identity.Parse(csr.URIs[0].String())
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("csr SAN: %v", err)
	}
	return csr, id, nil
}

// prove checks that the caller is id, and returns the UID of the pod it
// runs in: by a bootstrap token, or by a verified client certificate for
// id (whose pod the new one names too).
func (s *Service) prove(ctx context.Context, req *meshpb.SignRequest, csr *x509.CertificateRequest, id identity.ID) (podUID string, err error) {
	if tok := req.GetBootstrapToken(); tok != "" {
		if s.Attestor == nil {
			return "", errors.New("this control plane accepts no bootstrap tokens")
		}
		return s.Attestor.Attest(ctx, tok, req.GetPodNamespace(), req.GetPodName(), id, keyHash(csr))
	}
	peerID, err := clientIdentity(ctx)
	if err != nil {
		return "", fmt.Errorf("no bootstrap token, and %v", err)
	}
	if peerID != id {
		return "", fmt.Errorf("the client certificate is %s, not the %s asked for", peerID, id)
	}
	chain, _ := ClientChain(ctx) // clientIdentity read it
	pod := identity.PodOf(chain[0])
	if s.Runs != nil {
		return pod, s.Runs(id, pod)
	}
	return pod, nil
}

// clientIdentity is the SPIFFE ID of the caller's verified TLS client
// certificate.
func clientIdentity(ctx context.Context) (identity.ID, error) {
	chain, err := ClientChain(ctx)
	if err != nil {
		return identity.ID{}, err
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 {
		return identity.ID{}, errors.New("the client certificate carries no single SPIFFE ID")
	}
	return identity.Parse(leaf.URIs[0].String())
}

// ClientIdentity is the SPIFFE ID of a gRPC caller's verified client
// certificate, for other services on the same server.
func ClientIdentity(ctx context.Context) (identity.ID, error) { return clientIdentity(ctx) }

// ClientChain is the chain a gRPC caller's client certificate verified
// with when its connection was made, leaf first and root last: what the
// caller proved by its handshake, not what it says.
func ClientChain(ctx context.Context) ([]*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no TLS client certificate")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, errors.New("no verified TLS client certificate")
	}
	return info.State.VerifiedChains[0], nil
}

func keyHash(csr *x509.CertificateRequest) string {
	return Fingerprint(&x509.Certificate{Raw: csr.RawSubjectPublicKeyInfo})
}
