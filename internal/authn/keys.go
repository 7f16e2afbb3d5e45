package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// MaxJWKSSize caps a key set, inline or fetched.
const MaxJWKSSize = 1 << 20

// algorithms are the signature algorithms accepted. HS* is left out: its
// key is a shared secret, and with a public key set it would let anyone
// sign (the algorithm-confusion attack); "none" is no signature at all.
var algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

var curveAlgorithm = map[elliptic.Curve]jose.SignatureAlgorithm{
	elliptic.P256(): jose.ES256,
	elliptic.P384(): jose.ES384,
	elliptic.P521(): jose.ES512,
}

// key is a public key from a key set.
type key struct {
	kid, alg string
	pub      crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// verifies reports whether k may check a signature made with alg: the
// key's type (and curve) must be the algorithm's, and its alg, when the
// key set gives one, must be alg.
func (k key) verifies(alg jose.SignatureAlgorithm) bool {
	if k.alg != "" && k.alg != string(alg) {
		return false
	}
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(string(alg), "RS") || strings.HasPrefix(string(alg), "PS")
	case *ecdsa.PublicKey:
		return curveAlgorithm[pub.Curve] == alg
	case ed25519.PublicKey:
		return alg == jose.EdDSA
	}
	return false
}

// parseJWKS reads a JSON Web Key Set. Keys of a type it does not know,
// or meant for encryption, are skipped, as RFC 7517 section 5 asks; a
// symmetric key or private key material refuses the whole set, since
// either means the set was not meant to be public.
func parseJWKS(data []byte) ([]key, error) {
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("key set of %d bytes is over the %d-byte limit", len(data), MaxJWKSSize)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	if set.Keys == nil {
		return nil, errors.New(`no "keys" member: a JSON Web Key Set reads {"keys": [...]}`)
	}
	var keys []key
	for i, raw := range set.Keys {
		k, ok, err := parseJWK(raw)
		if err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		if ok {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable key: give RSA, EC (P-256, P-384, P-521) or OKP (Ed25519) public signing keys")
	}
	return keys, nil
}

// parseJWK reads one key; ok is false for a key to skip.
func parseJWK(raw json.RawMessage) (k key, ok bool, err error) {
	var h struct {
		Kty  string          `json:"kty"`
		Use  string          `json:"use"`
		Alg  string          `json:"alg"`
		D    json.RawMessage `json:"d"`
		P    json.RawMessage `json:"p"`
		Q    json.RawMessage `json:"q"`
		DP   json.RawMessage `json:"dp"`
		DQ   json.RawMessage `json:"dq"`
		QI   json.RawMessage `json:"qi"`
		K    json.RawMessage `json:"k"`
		Priv json.RawMessage `json:"priv"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return key{}, false, fmt.Errorf("not a JSON Web Key: %v", err)
	}
	switch {
	case h.Kty == "oct":
		return key{}, false, errors.New(`kty "oct" is a shared secret: HS256/384/512 checked against a public key set lets anyone sign (algorithm confusion); publish RSA, EC or Ed25519 public keys`)
	case h.D != nil || h.P != nil || h.Q != nil || h.DP != nil || h.DQ != nil || h.QI != nil || h.K != nil || h.Priv != nil:
		return key{}, false, errors.New("holds private key material (d, p, q, dp, dq, qi, k or priv): publish the public key only")
	case h.Kty == "":
		return key{}, false, errors.New("no kty: give the key type (RSA, EC or OKP)")
	case h.Kty != "RSA" && h.Kty != "EC" && h.Kty != "OKP",
		h.Use != "" && h.Use != "sig",
		h.Alg != "" && !slices.Contains(algorithms, jose.SignatureAlgorithm(h.Alg)):
		return key{}, false, nil
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		if errors.Is(err, jose.ErrUnsupportedKeyType) {
			// An OKP curve other than Ed25519, or RSA over 4096 bits.
			return key{}, false, nil
		}
		return key{}, false, err
	}
	return key{kid: jwk.KeyID, alg: jwk.Algorithm, pub: jwk.Key}, true, nil
}
