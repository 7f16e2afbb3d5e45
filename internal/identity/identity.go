// Package identity defines workload identities: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, parsed and
// formatted strictly by the SPIFFE ID specification.
//
// It is a leaf: every package that names a workload (the CA, mTLS, policy,
// telemetry) imports it, and it imports nothing of the project.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Errors returned by Parse, grouped so callers can tell them apart.
var (
	ErrScheme      = errors.New("scheme must be spiffe")
	ErrTrustDomain = errors.New("trust domain must be lowercase letters, digits, '.', '-' or '_'")
	ErrPath        = errors.New("path segments must be non-empty, not '.' or '..', of letters, digits, '.', '-' or '_'")
	ErrParts       = errors.New("a SPIFFE ID has no port, user info, query or fragment")
	ErrTooLong     = errors.New("a SPIFFE ID is at most 2048 bytes")
	ErrNotWorkload = errors.New("not a workload ID of the form /ns/<namespace>/sa/<service-account>")
)

// ID is a SPIFFE ID. The zero value is not a valid ID; IsZero reports it.
type ID struct {
	trustDomain string
	path        string // "" or "/seg/seg"
}

// Parse parses and validates a SPIFFE ID such as
// "spiffe://cluster.local/ns/db/sa/alpha".
func Parse(s string) (ID, error) {
	if len(s) > 2048 {
		return ID{}, fmt.Errorf("parse SPIFFE ID: %w", ErrTooLong)
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return ID{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, ErrScheme)
	}
	td, path, _ := strings.Cut(rest, "/")
	if strings.ContainsAny(rest, "?#@:%") {
		return ID{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, ErrParts)
	}
	if err := checkTrustDomain(td); err != nil {
		return ID{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, err)
	}
	id := ID{trustDomain: td}
	if strings.Contains(rest, "/") {
		id.path = "/" + path
		if err := checkPath(id.path); err != nil {
			return ID{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, err)
		}
	}
	return id, nil
}

// FromURI returns the ID a certificate's URI SAN carries.
func FromURI(u *url.URL) (ID, error) { return Parse(u.String()) }

// ForWorkload returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
func ForWorkload(trustDomain, namespace, serviceAccount string) (ID, error) {
	id, err := Parse("spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount)
	if err != nil {
		return ID{}, err
	}
	if ns, sa, err := id.Workload(); err != nil || ns != namespace || sa != serviceAccount {
		return ID{}, fmt.Errorf("workload ID for namespace %q, service account %q: %w", namespace, serviceAccount, ErrNotWorkload)
	}
	return id, nil
}

func checkTrustDomain(td string) error {
	if td == "" {
		return ErrTrustDomain
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return ErrTrustDomain
		}
	}
	return nil
}

func checkPath(path string) error {
	for _, seg := range strings.Split(path[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return ErrPath
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return ErrPath
			}
		}
	}
	return nil
}

// String formats the ID; "" for the zero ID.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return "spiffe://" + id.trustDomain + id.path
}

// URL returns the ID as a URL, for a certificate's URI SAN.
func (id ID) URL() *url.URL { return &url.URL{Scheme: "spiffe", Host: id.trustDomain, Path: id.path} }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id.trustDomain == "" }

// TrustDomain returns the trust domain ("cluster.local").
func (id ID) TrustDomain() string { return id.trustDomain }

// Path returns the path ("/ns/db/sa/alpha"), "" for a trust domain's own ID.
func (id ID) Path() string { return id.path }

// Workload returns the namespace and service account of a workload ID.
func (id ID) Workload() (namespace, serviceAccount string, err error) {
	parts := strings.Split(id.path, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", fmt.Errorf("%s: %w", id, ErrNotWorkload)
	}
	return parts[2], parts[4], nil
}

// PodOf is the UID of the pod a certificate was issued to, which the CA
// writes as its subject serialNumber (see ca.Authority.SignCSR); empty when
// it names none. Peers refuse certificates of deleted pods by it.
func PodOf(c *x509.Certificate) string { return c.Subject.SerialNumber }
