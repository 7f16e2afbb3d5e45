package localmesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Files in the state directory.
const (
	lockFile   = "lock"        // flock held by the running mesh; holds its pid
	ledgerFile = "ledger.json" // everything created on the host, written first
	socketFile = "api.sock"    // the running mesh's API
	logDir     = "logs"        // one file per container
)

// ErrAlreadyRunning is returned by Lock when another process holds the state
// directory.
var ErrAlreadyRunning = errors.New("a mesh is already running")

// Lock takes the state directory's lock and writes the caller's pid into it.
// The lock is released by closing the returned file or by the process dying,
// so a killed mesh never leaves a stale lock behind.
func Lock(stateDir string) (*os.File, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	path := filepath.Join(stateDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("%w with state directory %s (pid %s): stop it with `trellis down`, or pass --state-dir to run a second mesh",
			ErrAlreadyRunning, stateDir, strings.TrimSpace(string(pid)))
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// Running reports whether a process holds stateDir's lock.
func Running(stateDir string) bool {
	f, err := os.Open(filepath.Join(stateDir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// Resource kinds in the ledger.
const (
	resNetns    = "netns"    // a named network namespace
	resLink     = "link"     // a link in the host namespace
	resNFTable  = "nftable"  // an nftables table (family ip) in the host namespace
	resHostsDir = "hostsdir" // an /etc/netns/NAME directory
	resSysctl   = "sysctl"   // a sysctl we changed; Old is the value to restore
)

// Resource is one thing the runtime created on the host.
type Resource struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	Old  string `json:"old,omitempty"`
}

// Ledger is the on-disk record of everything the runtime created on the host.
// An entry is written (and synced) before the thing is created and removed
// after it is gone, so `trellis down` can remove everything even after the
// mesh was killed with SIGKILL. Safe for concurrent use.
type Ledger struct {
	path string

	mu    sync.Mutex
	items []Resource // guarded by mu; in creation order
}

// OpenLedger reads the ledger in stateDir, or starts an empty one.
func OpenLedger(stateDir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(stateDir, ledgerFile)}
	data, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	if err := json.Unmarshal(data, &l.items); err != nil {
		return nil, fmt.Errorf("read ledger %s: %w (remove it only after cleaning up by hand)", l.path, err)
	}
	return l, nil
}

// Add records r before it is created. Adding an entry twice is a no-op.
func (l *Ledger) Add(r Resource) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, it := range l.items {
		if it.Kind == r.Kind && it.Name == r.Name {
			return nil
		}
	}
	l.items = append(l.items, r)
	return l.saveLocked()
}

// Remove forgets r after it was removed from the host.
func (l *Ledger) Remove(kind, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, it := range l.items {
		if it.Kind == kind && it.Name == name {
			l.items = append(l.items[:i], l.items[i+1:]...)
			return l.saveLocked()
		}
	}
	return nil
}

// Items returns a copy of the entries, newest first: the order to undo them.
func (l *Ledger) Items() []Resource {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Resource, len(l.items))
	for i, it := range l.items {
		out[len(out)-1-i] = it
	}
	return out
}

func (l *Ledger) saveLocked() error {
	data, err := json.MarshalIndent(l.items, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	return nil
}

// HasLeftovers reports whether stateDir's ledger records anything still to
// remove.
func HasLeftovers(stateDir string) bool {
	l, err := OpenLedger(stateDir)
	return err != nil || len(l.Items()) > 0
}
