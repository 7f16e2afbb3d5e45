package localmesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Every container process starts as
//
//	trellis __nsexec SANDBOX -- PROGRAM ARGS...
//
// run by the runtime as root. It is the container's supervisor: it enters
// the pod's network namespace, makes the container's mount view (or, for
// exec and exec probes, enters a running container's), and starts
// `trellis __nsinit SANDBOX -- PROGRAM ARGS...` in a new user namespace
// that maps the pod's 65536 ids to a host range no one else uses. That
// process sets the container's user, groups and capabilities and execs
// PROGRAM. The supervisor waits and exits as the program did.
//
// Why two steps: a multi-threaded process (every Go program) can neither
// unshare nor join a user namespace, so the new one comes from a fork; and
// the mount and network namespaces must belong to the host's user
// namespace, or root in the pod would hold CAP_SYS_ADMIN and CAP_NET_ADMIN
// over them (and could unmount its view or rewrite its capture rules).
const (
	NSExecCommand = "__nsexec"
	NSInitCommand = "__nsinit"
)

// podIDs is how many uids and gids each pod has: 0..podIDs-1 inside it.
const podIDs = 65536

// Sandbox is how one container process is confined. It travels as JSON on
// the command line of __nsexec and __nsinit.
type Sandbox struct {
	// Netns is the pod's network namespace.
	Netns string `json:"netns"`
	// View, for a new container, is the mount view to make. Join, for
	// exec into a running one, is the pid of that container's
	// supervisor, whose namespaces are entered instead.
	View *View `json:"view,omitempty"`
	Join int   `json:"join,omitempty"`
	// IDBase is the host uid and gid of the pod's id 0; podIDs ids are
	// mapped from there.
	IDBase uint32 `json:"idBase"`
	// UID, GID and Groups are the process's ids inside the pod.
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// Caps are the capabilities kept (by number); all others leave the
	// bounding set. Empty: none.
	Caps []int `json:"caps,omitempty"`
	// NoNewPrivs sets no_new_privs: setuid binaries and file capabilities
	// grant nothing.
	NoNewPrivs bool `json:"noNewPrivs"`
	// Dir is the working directory, a path in the view.
	Dir string `json:"dir"`
}

// sandboxArgs is the argument vector that starts argv in sandbox s through
// the trellis binary exe.
func sandboxArgs(exe string, s Sandbox, argv []string) ([]string, error) {
	return stepArgs(exe, NSExecCommand, s, argv)
}

// stepArgs is `ARG0 STEP SANDBOX -- ARGV...`, the command line of both
// steps (__nsexec, __nsinit).
func stepArgs(arg0, step string, s Sandbox, argv []string) ([]string, error) {
	spec, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return append([]string{arg0, step, string(spec), "--"}, argv...), nil
}

// ParseSandbox reads the SANDBOX argument of __nsexec and __nsinit.
func ParseSandbox(arg string) (Sandbox, error) {
	var s Sandbox
	if err := json.Unmarshal([]byte(arg), &s); err != nil {
		return s, fmt.Errorf("sandbox: %w", err)
	}
	return s, s.check()
}

func (s Sandbox) check() error {
	switch {
	case s.Netns == "" || (s.View == nil) == (s.Join == 0):
		return errors.New("sandbox: give the netns and exactly one of view and join")
	case s.IDBase < idRangeStart || s.IDBase%podIDs != 0:
		// Never map a pod's ids onto the host's own (root's, say).
		return fmt.Errorf("sandbox: id base %d is not a pod's range", s.IDBase)
	case s.UID >= podIDs || s.GID >= podIDs:
		return fmt.Errorf("sandbox: ids %d:%d are outside the pod's 0-%d", s.UID, s.GID, podIDs-1)
	}
	return nil
}

// RunSandboxed is __nsexec: it runs argv with environment env in sandbox
// s, waits for it and returns the exit status to exit with (128+N when
// killed by signal N). `trellis exec` calls it too, with a Join sandbox.
func RunSandboxed(s Sandbox, argv, env []string) (int, error) {
	if len(argv) == 0 {
		return 127, errors.New("sandbox: no command given")
	}
	if err := s.check(); err != nil {
		return 127, err
	}
	runtime.LockOSThread() // namespaces are per thread; the child forks from this one
	if err := enterSandbox(s); err != nil {
		return 127, err
	}
	args, err := stepArgs("trellis", NSInitCommand, s, argv)
	if err != nil {
		return 127, err
	}
	maps := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(s.IDBase), Size: podIDs}}
	cmd := &exec.Cmd{
		// The view may not show the binary under its host path, but
		// /proc/self/exe always reaches it.
		Path:   "/proc/self/exe",
		Args:   args,
		Env:    env,
		Dir:    s.Dir,
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: maps, GidMappings: maps, GidMappingsEnableSetgroups: true,
			// Root of the new user namespace, with its capabilities
			// there (only): __nsinit needs them to set the final ids.
			Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
			Pdeathsig:  syscall.SIGKILL,
		},
	}
	// Signals for the container reach it directly (same process group);
	// the supervisor outlives them to report the exit.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	if err := cmd.Start(); err != nil {
		return 127, fmt.Errorf("sandbox: start %s: %w", argv[0], err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 127, err
}

// enterSandbox moves the calling (locked) thread into the pod's network
// namespace and into the container's mount view, making it for a new
// container.
func enterSandbox(s Sandbox) error {
	pod, err := netns.GetFromName(s.Netns)
	if err != nil {
		return fmt.Errorf("sandbox: network namespace %s: %w (is the mesh running?)", s.Netns, err)
	}
	defer pod.Close()
	if s.Join != 0 {
		return joinContainer(s, pod)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("sandbox: new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("sandbox: make / a slave mount: %w", err)
	}
	if err := netns.Set(pod); err != nil {
		return fmt.Errorf("sandbox: join network namespace %s: %w", s.Netns, err)
	}
	if err := makeView(*s.View); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return pivotInto(s.View.Root)
}

// joinContainer enters the network and mount namespaces of the running
// container whose supervisor is s.Join, after checking that the process is
// in the pod's network namespace (and so is no stranger that reused the
// pid).
func joinContainer(s Sandbox, pod netns.NsHandle) error {
	dir := fmt.Sprintf("/proc/%d/ns/", s.Join)
	// A container counts as running from the moment its supervisor
	// starts, a few milliseconds before that supervisor has entered the
	// pod's network namespace and pivoted into its finished view (the
	// last step of enterSandbox): a command right after it waits for
	// both, briefly.
	var host unix.Stat_t
	if err := unix.Stat("/", &host); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		net, err := netns.GetFromPath(dir + "net")
		if err != nil {
			return fmt.Errorf("sandbox: container process %d: %w (has it exited?)", s.Join, err)
		}
		in := net.Equal(pod)
		net.Close()
		var root unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/root", s.Join), &root); err != nil {
			return fmt.Errorf("sandbox: container process %d: %w (has it exited?)", s.Join, err)
		}
		pivoted := root.Dev != host.Dev || root.Ino != host.Ino
		if in && pivoted {
			break
		}
		if time.Now().After(deadline) {
			if !in {
				return fmt.Errorf("sandbox: process %d is not in the pod's network namespace %s (the container restarted; try again)", s.Join, s.Netns)
			}
			return fmt.Errorf("sandbox: process %d has not entered its container's view (is it a container's supervisor?)", s.Join)
		}
	}
	mnt, err := os.Open(dir + "mnt")
	if err != nil {
		return fmt.Errorf("sandbox: container process %d: %w", s.Join, err)
	}
	defer mnt.Close()
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(int(mnt.Fd()), &theirs); err != nil {
		return fmt.Errorf("sandbox: container process %d: %w", s.Join, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/mnt", &ours); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if theirs.Ino == ours.Ino && theirs.Dev == ours.Dev {
		return fmt.Errorf("sandbox: process %d has no view of its own (is it a container's supervisor?)", s.Join)
	}
	// A thread can change its mount namespace only with a filesystem
	// context of its own (Go's threads share one).
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("sandbox: unshare the filesystem context: %w", err)
	}
	if err := unix.Setns(int(pod), unix.CLONE_NEWNET); err != nil { // the process's, checked above
		return fmt.Errorf("sandbox: join the pod's network namespace: %w", err)
	}
	if err := unix.Setns(int(mnt.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("sandbox: join the container's mount namespace: %w", err)
	}
	return nil
}

// InitSandboxed is __nsinit: running as root of the container's new user
// namespace, it drops every capability s does not keep, sets the
// container's ids, no_new_privs unless escalation is allowed, and execs
// argv. It returns only on failure. Every step is a raw system call on
// this one locked thread, the thread that execs (credentials and the
// bounding set are per thread).
func InitSandboxed(s Sandbox, argv, env []string) error {
	if len(argv) == 0 {
		return errors.New("sandbox: no command given")
	}
	runtime.LockOSThread()
	keep := map[int]bool{}
	var mask [2]uint32
	for _, c := range s.Caps {
		if c < 0 || c >= 64 {
			return fmt.Errorf("sandbox: capability %d out of range", c)
		}
		keep[c] = true
		mask[c/32] |= 1 << (c % 32)
	}
	for c := 0; ; c++ {
		if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_READ, uintptr(c), 0); e != 0 {
			break // past the kernel's last capability
		}
		if keep[c] {
			continue
		}
		if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e != 0 {
			return fmt.Errorf("sandbox: drop capability %d from the bounding set: %w", c, e)
		}
	}
	groups := append([]uint32(nil), s.Groups...)
	var gp uintptr
	if len(groups) > 0 {
		gp = uintptr(unsafe.Pointer(&groups[0]))
	}
	steps := []struct {
		what       string
		trap       uintptr
		a1, a2, a3 uintptr
	}{
		{"set the supplementary groups", unix.SYS_SETGROUPS, uintptr(len(groups)), gp, 0},
		{"set the gid", unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)},
		{"keep capabilities across the uid change", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0},
		{"set the uid", unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)},
	}
	for _, st := range steps {
		if _, _, e := unix.RawSyscall(st.trap, st.a1, st.a2, st.a3); e != 0 {
			return fmt.Errorf("sandbox: %s: %w", st.what, e)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: mask[0], Permitted: mask[0], Inheritable: mask[0]},
		{Effective: mask[1], Permitted: mask[1], Inheritable: mask[1]},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("sandbox: set capabilities: %w", err)
	}
	if s.UID != 0 {
		// A non-root program keeps capabilities across exec only as
		// ambient ones.
		for c := range keep {
			if _, _, e := unix.RawSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0, 0); e != 0 {
				return fmt.Errorf("sandbox: raise ambient capability %d: %w", c, e)
			}
		}
	}
	if s.NoNewPrivs {
		if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
			return fmt.Errorf("sandbox: set no_new_privs: %w", e)
		}
	}
	// Changing ids cleared the parent-death signal; the container must
	// still die with its supervisor.
	if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0); e != 0 {
		return fmt.Errorf("sandbox: set the parent-death signal: %w", e)
	}
	if os.Getppid() == 1 {
		return errors.New("sandbox: the supervisor is gone")
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		return err
	}
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("sandbox: exec %s: %w", path, err)
	}
	return nil
}

// lookPath finds a bare program name in env's PATH, as a shell would.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			os.Setenv("PATH", p)
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("sandbox: %q: not found in the container's PATH", name)
	}
	return p, nil
}
