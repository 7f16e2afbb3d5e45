package localmesh

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NSExecCommand is the hidden trellis subcommand that enters a pod and execs
// a program: `trellis __nsexec NETNS -- PROGRAM ARGS...`. The runtime starts
// every container process through it, so the process itself (same pid) runs
// in the pod.
const NSExecCommand = "__nsexec"

// ExecInPod replaces the calling process with argv running inside the named
// network namespace, seeing the pod's /etc files (its hosts file) in place of
// the host's, with environment env. It is what `ip netns exec` does: a
// private mount namespace (slave to the host's, so nothing leaks back), each
// file of /etc/netns/NAME bind-mounted over /etc, and /sys remounted for the
// pod's interfaces. It returns only on failure.
func ExecInPod(netnsName string, argv, env []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("exec in pod: no command given")
	}
	runtime.LockOSThread() // namespaces are per thread; exec happens on this one
	if err := enterPod(netnsName); err != nil {
		return err
	}
	path := argv[0]
	if filepath.Base(path) == path {
		for _, kv := range env {
			if len(kv) > 5 && kv[:5] == "PATH=" {
				os.Setenv("PATH", kv[5:])
			}
		}
		p, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("exec in pod: %q: not found in the pod's PATH", path)
		}
		path = p
	}
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("exec in pod: %s: %w", path, err)
	}
	return nil
}

func enterPod(netnsName string) error {
	ns, err := netns.GetFromName(netnsName)
	if err != nil {
		return fmt.Errorf("enter pod: network namespace %s: %w (is the mesh running?)", netnsName, err)
	}
	defer ns.Close()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter pod: new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("enter pod: make / a slave mount: %w", err)
	}
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter pod: join network namespace %s: %w", netnsName, err)
	}
	etc := filepath.Join(netnsEtcDir, netnsName)
	entries, _ := os.ReadDir(etc)
	for _, e := range entries {
		src, dst := filepath.Join(etc, e.Name()), filepath.Join("/etc", e.Name())
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("enter pod: bind %s over %s: %w", src, dst, err)
		}
	}
	// Best effort, as ip netns exec: /sys shows the pod's interfaces.
	if err := unix.Unmount("/sys", unix.MNT_DETACH); err == nil {
		_ = unix.Mount(netnsName, "/sys", "sysfs", 0, "")
	}
	return nil
}
