package localmesh

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/nft"
)

// undo removes one ledger resource from the host. Missing things are fine:
// undo runs again after a crash and must be idempotent. It refuses an entry
// that fails checkResource and acts on nothing then.
func undo(r Resource) error {
	if err := checkResource(r); err != nil {
		return err
	}
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

// Longest names checkResource accepts: a file name (NAME_MAX), a link name
// (IFNAMSIZ less its NUL) and an nftables table name (256 with its NUL).
const (
	maxFileName  = 255
	maxLinkName  = unix.IFNAMSIZ - 1
	maxTableName = 255
)

// checkResource refuses a ledger entry the runtime could not have written,
// so an edited ledger cannot make clean-up, which runs as root, remove or
// write anything else: a known kind, a plain name for netns, hostsdir, link
// and nftable entries, and for a sysctl one of meshSysctls with a decimal
// integer to restore.
func checkResource(r Resource) error {
	var err error
	switch r.Kind {
	case resNetns, resHostsDir:
		err = checkPlainName(r.Name, maxFileName)
	case resLink:
		err = checkPlainName(r.Name, maxLinkName)
	case resNFTable:
		err = checkPlainName(r.Name, maxTableName)
	case resSysctl:
		if !slices.Contains(meshSysctls, r.Name) {
			err = errors.New("not a sysctl trellis sets")
		} else if _, perr := strconv.ParseInt(r.Old, 10, 64); perr != nil {
			err = fmt.Errorf("old value %q is not a decimal integer", r.Old)
		}
	default:
		err = errors.New("not a kind of resource trellis records")
	}
	if err != nil {
		return fmt.Errorf("ledger entry %s %q: %w", r.Kind, r.Name, err)
	}
	return nil
}

// checkPlainName accepts a non-empty name of at most max bytes of
// [A-Za-z0-9._-] other than "." and "..": never a path.
func checkPlainName(name string, max int) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > max:
		return fmt.Errorf("name longer than %d bytes", max)
	case name == "." || name == "..":
		return errors.New("not a plain name")
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("not a plain name: byte %q is not one of [A-Za-z0-9._-]", c)
		}
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
// removed and keeps going past failures, returning them joined. It refuses
// a state directory that fails checkStateDir; entries that fail
// checkResource are reported, left alone and kept in the ledger.
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
		if err := checkResource(r); err != nil {
			errs = append(errs, fmt.Errorf("%w; remove the entry from %s by hand", err, l.path))
			continue
		}
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
