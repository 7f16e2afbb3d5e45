package localmesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

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
// It creates the directory (mode 0700) if it is missing and refuses one that
// another user could tamper with (see checkStateDir). The lock is released by
// closing the returned file or by the process dying, so a killed mesh never
// leaves a stale lock behind.
func Lock(stateDir string) (*os.File, error) {
	if _, err := os.Lstat(stateDir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
		if err := os.Chmod(stateDir, 0o700); err != nil {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
	}
	if err := checkStateDir(stateDir); err != nil {
		return nil, err
	}
	f, err := openNoFollow(filepath.Join(stateDir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		return nil, fmt.Errorf("%w with state directory %s (pid %s): stop it with `trellis down`, or pass --state-dir to run a second mesh",
			ErrAlreadyRunning, stateDir, strings.TrimSpace(string(pid)))
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// checkStateDir refuses a state directory that someone other than the
// caller could change: the mesh acts as root on what the directory holds
// (the ledger says what to delete), so it must be a real directory, not a
// symlink, owned by root (by the caller's effective uid when not root) and
// not writable by group or others. A missing directory is an error wrapping
// fs.ErrNotExist.
func checkStateDir(dir string) error {
	fi, err := os.Lstat(filepath.Clean(dir))
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	const fix = "or choose another with --state-dir"
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("state directory %s is a symlink: use the directory it points to, %s", dir, fix)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory: remove it, %s", dir, fix)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("state directory %s: cannot read its owner", dir)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		want := "root"
		if uid != 0 {
			want = "you"
		}
		return fmt.Errorf("state directory %s is owned by uid %d, not %s (uid %d): chown %d %s, %s",
			dir, st.Uid, want, uid, uid, dir, fix)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("state directory %s is writable by group or others (mode %04o): chmod 0700 %s, %s",
			dir, perm, dir, fix)
	}
	return nil
}

// openNoFollow is os.OpenFile that refuses a symlink as path's last
// component, so a link planted in the state directory cannot redirect a
// read or write made as root.
func openNoFollow(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW, perm)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s is a symlink; remove it", path)
	}
	return f, err
}

// writeFileAtomic replaces path with data, durably: it writes and syncs
// path+".tmp" (removing any leftover first, and creating it afresh without
// following symlinks) and renames it over path. A symlink at path is
// replaced, never written through.
func writeFileAtomic(path string, data []byte) error {
	return writeFileShared(path, data, -1)
}

// writeFileShared is writeFileAtomic for a file that group gid may read
// (mode 0640, root's); gid -1 keeps it root's alone (0600).
func writeFileShared(path string, data []byte, gid int) error {
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := openNoFollow(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if gid >= 0 {
		err := f.Chown(-1, gid)
		if err == nil {
			err = f.Chmod(0o640)
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Running reports whether a process holds stateDir's lock.
func Running(stateDir string) bool {
	f, err := openNoFollow(filepath.Join(stateDir, lockFile), os.O_RDONLY, 0)
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

// OpenLedger reads the ledger in stateDir, or starts an empty one when
// there is none (or no stateDir at all). It refuses a state directory that
// fails checkStateDir and a ledger file that is a symlink.
func OpenLedger(stateDir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(stateDir, ledgerFile)}
	if err := checkStateDir(stateDir); errors.Is(err, fs.ErrNotExist) {
		return l, nil
	} else if err != nil {
		return nil, err
	}
	f, err := openNoFollow(l.path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
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
	if err := writeFileAtomic(l.path, data); err != nil {
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
