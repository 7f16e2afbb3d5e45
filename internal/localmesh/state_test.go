package localmesh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every entry point that trusts the state directory refuses one another
// user could tamper with, and says which directory and what to do.
func TestStateDirRefused(t *testing.T) {
	for _, tt := range []struct {
		name string
		make func(t *testing.T, dir string) // dir does not exist yet
		want string
	}{
		{"group writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o770) }, "is writable by group or others (mode 0770): chmod 0700 "},
		{"others writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o707) }, "is writable by group or others (mode 0707)"},
		{"sticky world writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o777|os.ModeSticky) }, "is writable by group or others"},
		{"other owner", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			mkdir(t, dir, 0o700)
			if err := os.Chown(dir, 1000, 1000); err != nil {
				t.Fatal(err)
			}
		}, "is owned by uid 1000, not root (uid 0): chown 0 "},
		{"symlink", func(t *testing.T, dir string) {
			real := filepath.Join(filepath.Dir(dir), "real")
			mkdir(t, real, 0o700)
			if err := os.Symlink(real, dir); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"regular file", func(t *testing.T, dir string) {
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			tt.make(t, dir)
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "state directory "+dir) ||
					!strings.Contains(err.Error(), "--state-dir") {
					t.Errorf("%s(%s) error = %v, want one naming it and saying %q", what, tt.name, err, tt.want)
				}
			}
			f, err := Lock(dir)
			if err == nil {
				f.Close()
			}
			check("Lock", err)
			_, err = OpenLedger(dir)
			check("OpenLedger", err)
			_, err = Cleanup(dir)
			check("Cleanup", err)
			if _, err := os.Lstat(filepath.Join(dir, lockFile)); err == nil {
				t.Errorf("Lock(%s) created a lock file in a refused directory", tt.name)
			}
		})
	}
}

func TestStateDirAccepted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	f, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock(new dir) error = %v", err)
	}
	f.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("Lock(new dir) made mode %04o, want 0700", got)
	}
	if _, err := OpenLedger(filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Errorf("OpenLedger(missing dir) error = %v, want an empty ledger", err)
	}
	if removed, err := Cleanup(filepath.Join(t.TempDir(), "missing")); err != nil || len(removed) != 0 {
		t.Errorf("Cleanup(missing dir) = %v, %v; want nothing, nil", removed, err)
	}
}

// A symlink planted in the state directory never redirects a read or write.
func TestStateFilesDoNotFollowSymlinks(t *testing.T) {
	t.Run("ledger read", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		plant(t, victim, filepath.Join(dir, ledgerFile))
		if _, err := OpenLedger(dir); err == nil || !strings.Contains(err.Error(), "is a symlink; remove it") {
			t.Errorf("OpenLedger(planted ledger) error = %v, want it to say the ledger is a symlink", err)
		}
		if _, err := Cleanup(dir); err == nil {
			t.Error("Cleanup(planted ledger) error = nil, want the symlink refused")
		}
		checkVictim(t, victim)
	})
	t.Run("ledger write", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		l, err := OpenLedger(dir)
		if err != nil {
			t.Fatal(err)
		}
		plant(t, victim, filepath.Join(dir, ledgerFile))
		if err := l.Add(Resource{Kind: resLink, Name: "br"}); err != nil {
			t.Fatal(err)
		}
		checkVictim(t, victim)
		checkRegular(t, filepath.Join(dir, ledgerFile))
	})
	t.Run("ledger temp file", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		plant(t, victim, filepath.Join(dir, ledgerFile+".tmp"))
		l, err := OpenLedger(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Add(Resource{Kind: resLink, Name: "br"}); err != nil {
			t.Fatal(err)
		}
		checkVictim(t, victim)
		if again, err := OpenLedger(dir); err != nil || len(again.Items()) != 1 {
			t.Errorf("reopened ledger = %v, %v; want the one entry", again, err)
		}
	})
	t.Run("lock", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		plant(t, victim, filepath.Join(dir, lockFile))
		if f, err := Lock(dir); err == nil || !strings.Contains(err.Error(), "is a symlink; remove it") {
			if f != nil {
				f.Close()
			}
			t.Errorf("Lock(planted lock) error = %v, want it to say the lock is a symlink", err)
		}
		checkVictim(t, victim)
	})
	t.Run("token temp file", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		path := filepath.Join(dir, tokenFile)
		plant(t, victim, path+".tmp")
		if err := writeFileAtomic(path, []byte("tok")); err != nil {
			t.Fatal(err)
		}
		checkVictim(t, victim)
		if got, _ := os.ReadFile(path); string(got) != "tok" {
			t.Errorf("token file = %q, want tok", got)
		}
	})
	t.Run("container log", func(t *testing.T) {
		dir, victim := t.TempDir(), victimFile(t)
		path := filepath.Join(dir, "c.log")
		plant(t, victim, path)
		if _, err := openNoFollow(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err == nil || !strings.Contains(err.Error(), "is a symlink; remove it") {
			t.Errorf("openNoFollow(planted log) error = %v, want it to say the log is a symlink", err)
		}
		checkVictim(t, victim)
	})
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

const victimText = "do not touch\n"

// victimFile is a file outside any state directory that a planted symlink
// points at.
func victimFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(path, []byte(victimText), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func plant(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func checkVictim(t *testing.T, path string) {
	t.Helper()
	if got, err := os.ReadFile(path); err != nil || string(got) != victimText {
		t.Errorf("symlink target %s = %q, %v; want it unchanged", path, got, err)
	}
}

func checkRegular(t *testing.T, path string) {
	t.Helper()
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("Lstat(%s) = %v, %v; want a regular file that replaced the symlink", path, fi, err)
	}
}
