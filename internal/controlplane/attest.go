package controlplane

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// tokenAttestor checks one-host bootstrap tokens against the hashes the
// runtime published in the registry, and spends each on first use. Spent
// tokens are appended to a file, so a restart does not make them good
// again.
type tokenAttestor struct {
	trustDomain string
	spentPath   string

	mu    sync.Mutex
	snap  *catalog.Snapshot // guarded by mu
	spent map[string]string // guarded by mu: token hash -> CSR key hash it was spent for
}

var _ ca.Attestor = (*tokenAttestor)(nil)

func newTokenAttestor(trustDomain, spentPath string) (*tokenAttestor, error) {
	a := &tokenAttestor{trustDomain: trustDomain, spentPath: spentPath, spent: map[string]string{}}
	f, err := os.Open(spentPath)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load spent tokens: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if tok, key, ok := strings.Cut(sc.Text(), " "); ok {
			a.spent[tok] = key
		}
	}
	return a, sc.Err()
}

func (a *tokenAttestor) setSnapshot(s *catalog.Snapshot) {
	a.mu.Lock()
	a.snap = s
	a.mu.Unlock()
}

// Attest implements ca.Attestor. The same CSR key may spend a token twice
// (a proxy retrying after a lost answer); any other second use is refused.
func (a *tokenAttestor) Attest(_ context.Context, token, namespace, name string, want identity.ID, csrKey string) (string, error) {
	sum := sha256.Sum256([]byte(token))
	h := hex.EncodeToString(sum[:])
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.snap == nil {
		return "", ca.ErrNotReady
	}
	pod := a.snap.Pod(namespace, name)
	if pod == nil {
		return "", fmt.Errorf("no pod %s/%s is known", namespace, name)
	}
	if pod.BootstrapTokenSHA256 == "" || subtle.ConstantTimeCompare([]byte(h), []byte(pod.BootstrapTokenSHA256)) != 1 {
		return "", fmt.Errorf("the bootstrap token was not given to pod %s/%s", namespace, name)
	}
	id, err := proxycfg.PodIdentity(pod.Pod, a.trustDomain)
	if err != nil {
		return "", err
	}
	if id != want {
		return "", fmt.Errorf("pod %s/%s runs as %s, not as the %s asked for", namespace, name, id, want)
	}
	if key, ok := a.spent[h]; ok && key != csrKey {
		return "", fmt.Errorf("the bootstrap token of pod %s/%s was used already", namespace, name)
	}
	if _, ok := a.spent[h]; ok {
		return pod.UID, nil // the same key again: its answer was lost
	}
	if err := a.spendLocked(h, csrKey); err != nil {
		return "", err
	}
	return pod.UID, nil
}

func (a *tokenAttestor) spendLocked(tok, key string) error {
	f, err := os.OpenFile(a.spentPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record spent token: %w", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s %s\n", tok, key); err != nil {
		return fmt.Errorf("record spent token: %w", err)
	}
	a.spent[tok] = key
	return f.Sync()
}
