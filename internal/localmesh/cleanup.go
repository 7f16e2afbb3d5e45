package localmesh

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/nft"
)

// undo removes one ledger resource from the host. Missing things are fine:
// undo runs again after a crash and must be idempotent.
func undo(r Resource) error {
	switch r.Kind {
	case resNetns:
		killNetnsProcesses(r.Name)
		path := filepath.Join(netnsRunDir, r.Name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount netns %s: %w", r.Name, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove netns %s: %w", r.Name, err)
		}
	case resLink:
		if l, err := netlink.LinkByName(r.Name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				return fmt.Errorf("delete link %s: %w", r.Name, err)
			}
		}
	case resHostsDir:
		if err := os.RemoveAll(filepath.Join(netnsEtcDir, r.Name)); err != nil {
			return fmt.Errorf("remove %s: %w", r.Name, err)
		}
	case resSysctl:
		if err := os.WriteFile(r.Name, []byte(r.Old+"\n"), 0o644); err != nil {
			return fmt.Errorf("restore %s: %w", r.Name, err)
		}
	case resNFTable:
		return nft.DeleteTable(nft.Table{Name: r.Name})
	}
	return nil
}

// killNetnsProcesses SIGKILLs every process whose network namespace is the
// named one: container processes orphaned when the mesh was killed.
func killNetnsProcesses(name string) {
	var target unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsRunDir, name), &target); err != nil {
		return
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid := 0
		if _, err := fmt.Sscanf(p.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/proc", p.Name(), "ns/net"), &st); err != nil {
			continue
		}
		if st.Ino == target.Ino && st.Dev == target.Dev {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Cleanup removes everything the ledger in stateDir records, newest first,
// and then the ledger itself. It is what `trellis down` does when no mesh
// process is left to do it (after SIGKILL, for example). It reports what it
// removed and keeps going past failures, returning them joined.
func Cleanup(stateDir string) (removed []Resource, err error) {
	l, err := OpenLedger(stateDir)
	if err != nil {
		return nil, err
	}
	return undoAll(l)
}

func undoAll(l *Ledger) ([]Resource, error) {
	var errs []error
	var removed []Resource
	for _, r := range l.Items() {
		if err := undo(r); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, r)
		if err := l.Remove(r.Kind, r.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}
