package localmesh

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// View is a container's filesystem: an empty tmpfs root holding read-only
// binds of the host's system directories (/usr, /etc and the like), the
// trellis binary, the working directory and Binds; the pod's /etc files
// over /etc's; its own /dev, /proc (other users' processes invisible) and
// /sys (the pod's interfaces); and a private /tmp unless ReadOnly.
type View struct {
	// Root is an empty directory the view is assembled on before it
	// becomes the root.
	Root string `json:"root"`
	// Binary is the trellis executable, shown at podBinary.
	Binary string `json:"binary"`
	// Binds are further host paths, shown read-only.
	Binds []Bind `json:"binds,omitempty"`
	// Hide are paths covered (a directory by an empty one, a file by
	// /dev/null) when the binds expose them: the state directory inside a
	// bound working directory, for one.
	Hide []string `json:"hide,omitempty"`
	// EtcDir holds the pod's hosts and resolv.conf, shown over /etc's.
	EtcDir string `json:"etcDir,omitempty"`
	// ReadOnly leaves nothing writable: no /tmp.
	ReadOnly bool `json:"readOnly,omitempty"`
}

// Bind shows the host path Source at Target in a view, read-only.
type Bind struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

// podBinDir is where the trellis binary appears in every container, first
// in PATH.
const podBinDir = "/run/trellis/bin"

// podBinary is the trellis binary's path inside containers.
const podBinary = podBinDir + "/trellis"

// hostSystemDirs are bound read-only into every view when they are
// directories on the host (symlinks at / are copied as symlinks).
var hostSystemDirs = []string{"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// makeView assembles v on v.Root, in the caller's own mount namespace:
// the skeleton, then what the kernel provides (/proc, /sys, /dev, /tmp),
// then the binds over them, then what the binds must not show. Last the
// skeleton becomes read-only: nothing can be added next to the binds.
func makeView(v View) error {
	steps := []func(View) error{viewSkeleton, viewKernelFS, viewBinds, viewHide}
	for _, step := range steps {
		if err := step(v); err != nil {
			return err
		}
	}
	return setReadOnly(v.Root, false)
}

// viewSkeleton mounts the view's root and copies the host's top-level
// symlinks (merged /usr: /bin -> usr/bin and the like).
func viewSkeleton(v View) error {
	if err := unix.Mount("tmpfs", v.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount the container's root on %s: %w", v.Root, err)
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		if target, err := os.Readlink("/" + e.Name()); err == nil {
			if err := os.Symlink(target, filepath.Join(v.Root, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.MkdirAll(filepath.Join(v.Root, "root"), 0o755)
}

// viewKernelFS gives the view its own /proc (other users' processes,
// which are the sidecar, other pods and the host, invisible), the pod's
// /sys (mounted from its network namespace), a /dev and, unless ReadOnly,
// a private /tmp.
func viewKernelFS(v View) error {
	type mount struct {
		fs, target, data string
		flags            uintptr
	}
	mounts := []mount{
		{"proc", "/proc", "hidepid=invisible", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY},
	}
	if !v.ReadOnly {
		mounts = append(mounts, mount{"tmpfs", "/tmp", "mode=1777,size=64m", unix.MS_NOSUID | unix.MS_NODEV})
	}
	for _, m := range mounts {
		p := filepath.Join(v.Root, m.target)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fs, p, m.fs, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.target, err)
		}
	}
	return makeDev(v.Root)
}

// viewBinds shows the host's system directories, the trellis binary, the
// pod's /etc files and v.Binds, all read-only.
func viewBinds(v View) error {
	var binds []Bind
	for _, d := range hostSystemDirs {
		if st, err := os.Lstat(d); err == nil && st.IsDir() {
			binds = append(binds, Bind{Source: d, Target: d})
		}
	}
	binds = append(binds, Bind{Source: v.Binary, Target: podBinary})
	if v.EtcDir != "" {
		files, err := os.ReadDir(v.EtcDir)
		if err != nil {
			return fmt.Errorf("the pod's /etc files: %w", err)
		}
		for _, f := range files {
			binds = append(binds, Bind{Source: filepath.Join(v.EtcDir, f.Name()), Target: filepath.Join("/etc", f.Name())})
		}
	}
	for _, b := range append(binds, v.Binds...) {
		if err := bindReadOnly(v.Root, b.Source, b.Target); err != nil {
			return err
		}
	}
	return nil
}

// viewHide covers other pods' /etc files and v.Hide: a directory by an
// empty one, a file by /dev/null.
func viewHide(v View) error {
	for _, h := range append([]string{netnsEtcDir}, v.Hide...) {
		p := filepath.Join(v.Root, h)
		st, err := os.Lstat(p)
		switch {
		case err != nil:
			continue
		case st.IsDir():
			err = unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_RDONLY, "mode=0,size=4k")
		default:
			err = unix.Mount(filepath.Join(v.Root, "dev/null"), p, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("hide %s: %w", h, err)
		}
	}
	return nil
}

// makeDev gives the view a /dev of its own: the harmless character devices
// of the host, the usual links, and a private /dev/shm.
func makeDev(root string) error {
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, name := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		p := filepath.Join(dev, name)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+name, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", name, err)
		}
	}
	for name, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	shm := filepath.Join(dev, "shm")
	if err := os.Mkdir(shm, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=64m"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	return setReadOnly(dev, false)
}

// bindReadOnly shows the host path src at dst inside root, read-only,
// without setuid or device files.
func bindReadOnly(root, src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	target := filepath.Join(root, dst)
	if err := mountPoint(target, st.IsDir()); err != nil {
		return fmt.Errorf("bind %s: mount point %s: %w", src, dst, err)
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	return setReadOnly(target, true)
}

// mountPoint makes sure a directory or file exists at path to mount on: a
// bind already there (/etc/hosts in /etc) serves as it is, else it is made
// on the view's writable skeleton. A symlink there is refused: the mount
// would land where it points.
func mountPoint(path string, dir bool) error {
	st, err := os.Lstat(path)
	switch {
	case err == nil && st.Mode()&os.ModeSymlink != 0:
		return errors.New("it is a symlink")
	case err == nil && st.IsDir() != dir:
		return errors.New("it is a directory on one side and a file on the other")
	case err == nil:
		return nil
	case dir:
		return os.MkdirAll(path, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// setReadOnly makes the mount at path (and, when recursive, those below
// it) read-only, without setuid and device files when it is a bind.
func setReadOnly(path string, recursive bool) error {
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID}
	flags := 0
	if recursive {
		attr.Attr_set |= unix.MOUNT_ATTR_NODEV
		flags = unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(-1, path, uint(flags), attr); err != nil {
		return fmt.Errorf("make %s read-only: %w", path, err)
	}
	return nil
}

// pivotInto makes root the root of the caller's mount namespace and
// detaches the host's filesystem from it entirely (pivot_root, not
// chroot: there is no way back up).
func pivotInto(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("sandbox: pivot_root to %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("sandbox: detach the host's root: %w", err)
	}
	return unix.Chdir("/")
}
