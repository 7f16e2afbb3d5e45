package meshtls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Files names the PEM files a proxy loads its material from: its SVID chain
// (leaf first), the SVID's private key, and the trust bundle (one or more
// roots; several while a root rotates).
type Files struct {
	Cert, Key, Bundle string
}

// Load reads the files into Material, checking that the key matches the
// certificate and that the certificate carries one SPIFFE ID.
func (f Files) Load() (Material, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return Material{}, fmt.Errorf("load SVID %s: %w", f.Cert, err)
	}
	id, err := idOf(cert.Leaf)
	if err != nil {
		return Material{}, fmt.Errorf("load SVID %s: %w", f.Cert, err)
	}
	data, err := os.ReadFile(f.Bundle)
	if err != nil {
		return Material{}, fmt.Errorf("load trust bundle: %w", err)
	}
	certs, err := ParseCerts(data)
	if err != nil {
		return Material{}, fmt.Errorf("load trust bundle %s: %w", f.Bundle, err)
	}
	if len(certs) == 0 {
		return Material{}, fmt.Errorf("load trust bundle %s: no certificate in it", f.Bundle)
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c)
	}
	return Material{ID: id, Cert: cert, Roots: roots}, nil
}

// ParseCerts parses every PEM block of data as an X.509 certificate, in
// order; data without a block gives none and no error.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
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

// Watch loads the files into store now and whenever they change, checking
// every interval (1 s when zero), until ctx is done. Failures go to onErr
// and leave the previous material in force. It returns the first load's
// error, if any, once ctx is done.
func (f Files) Watch(ctx context.Context, store *Store, interval time.Duration, onErr func(error)) error {
	if interval <= 0 {
		interval = time.Second
	}
	var last []byte
	var first error
	lastErr := ""
	loaded := false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		stamp, err := f.stamp()
		if err == nil && !bytes.Equal(stamp, last) {
			last = stamp
			var m Material
			if m, err = f.Load(); err == nil {
				store.Set(m)
				loaded = true
			}
		}
		// Each distinct failure is reported once, not every tick.
		if err != nil && err.Error() != lastErr {
			if !loaded && first == nil {
				first = err
			}
			if onErr != nil {
				onErr(err)
			}
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			if loaded {
				return nil
			}
			return errors.Join(first, ctx.Err())
		case <-tick.C:
		}
	}
}

// stamp is the three files' contents, to notice any change however it was
// made.
func (f Files) stamp() ([]byte, error) {
	var all []byte
	for _, p := range []string{f.Cert, f.Key, f.Bundle} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		all = append(append(all, b...), 0)
	}
	return all, nil
}
