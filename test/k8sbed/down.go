package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pathsOutsideDir are where components write whatever root they are
// given: the CNI plugins' cache, the kubelet's container log links, and
// containerd's shim sockets. Nothing else on a test machine uses them.
var pathsOutsideDir = []string{"/var/lib/cni", "/var/log/containers", "/run/containerd", "/var/lib/kubelet"}

// Down stops the bed and removes everything it made, whether it stopped
// cleanly before or crashed: the pods (through the kubelet while it
// runs), every process, the cgroups and mounts of pods, the node's
// network namespace (with its link and routes), and the files.
func (b *Bed) Down(ctx context.Context) error {
	if _, err := os.Stat(b.cfg.Dir); errors.Is(err, fs.ErrNotExist) {
		return b.removeNetwork()
	}
	if pid := b.pid("kubelet"); pid > 0 && alive(pid) && b.pid("kube-apiserver") > 0 && alive(b.pid("kube-apiserver")) {
		b.drainPods(ctx)
	}
	procs := processes()
	for i := len(procs) - 1; i >= 0; i-- {
		if pid := b.pid(procs[i].name); pid > 0 {
			stop(pid, 5*time.Second)
		}
	}

	var errs []error
	// Shims and containers outlive containerd: whatever still runs a
	// binary of the bed, or sits in a pod's cgroup, goes.
	if data, err := os.ReadFile(b.path("bin")); err == nil {
		killExecutablesIn(string(data))
	}
	errs = append(errs, removePodCgroups())
	errs = append(errs, unmountUnder(append([]string{b.cfg.Dir}, pathsOutsideDir...)...))
	errs = append(errs, b.removeNetwork())
	for _, p := range append([]string{b.cfg.Dir}, pathsOutsideDir...) {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// drainPods has the kubelet remove every pod (CNI DEL, unmounts) before
// the processes stop; the controllers are stopped first so that nothing
// is recreated. Best effort: what remains is removed by force afterwards.
func (b *Bed) drainPods(ctx context.Context) {
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		if pid := b.pid(name); pid > 0 {
			stop(pid, 5*time.Second)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if _, err := b.kubectl(ctx, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--timeout=40s"); err != nil {
		log.Printf("delete pods: %v", err)
	}
	if err := b.findBin(); err != nil {
		log.Printf("crictl rmp: %v", err)
		return
	}
	out, err := exec.CommandContext(ctx, filepath.Join(b.bin, "crictl"), "--runtime-endpoint", "unix://"+b.containerdSocket(), "rmp", "-fa").CombinedOutput()
	if err != nil {
		log.Printf("crictl rmp: %v: %s", err, out)
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the
// process to be gone.
func stop(pid int, grace time.Duration) {
	if !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; alive(pid) && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// killExecutablesIn kills every process running a binary from dir.
func killExecutablesIn(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && strings.HasPrefix(exe, dir+"/") {
			stop(pid, time.Second)
		}
	}
}

// removePodCgroups kills what is left in the kubelet's cgroups and removes
// them, deepest first, in every hierarchy.
func removePodCgroups() error {
	var dirs []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods*")
	if more, _ := filepath.Glob("/sys/fs/cgroup/kubepods*"); len(more) > 0 {
		roots = append(roots, more...)
	}
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		if procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(procs)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for _, d := range dirs {
		var err error
		for i := 0; i < 50; i++ {
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below the given paths, deepest
// first.
func unmountUnder(paths ...string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := strings.ReplaceAll(fields[4], `\040`, " ")
		for _, p := range paths {
			if mp == p || strings.HasPrefix(mp, p+"/") {
				points = append(points, mp)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// removeNetwork deletes the node's namespace (taking its link, the
// bridge and kube-proxy's tables with it) and the host end of the link.
func (b *Bed) removeNetwork() error {
	if _, err := os.Stat("/run/netns/" + netnsName); err == nil {
		if out, err := exec.Command("ip", "netns", "delete", netnsName).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns delete %s: %v: %s", netnsName, err, out)
		}
	}
	if err := os.Remove(netnsOwner); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, err := os.Stat("/sys/class/net/" + hostLink); err == nil {
		// Deleting the namespace takes the link's other end and so this
		// one, soon: gone meanwhile is as good as deleted.
		if out, err := exec.Command("ip", "link", "delete", hostLink).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			return fmt.Errorf("ip link delete %s: %v: %s", hostLink, err, out)
		}
	}
	return nil
}
