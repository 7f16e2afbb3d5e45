// Command escape is run inside a one-host pod by the sandbox end-to-end
// test (internal/cli/sandbox_e2e_test.go): it tries, as root inside the
// pod, each way out of the sandbox the test names, and prints one line per
// attempt: "NAME: blocked: ERROR" or "NAME: ALLOWED". It also makes
// attempts that must work (writing /tmp), so a helper that can do nothing
// at all does not pass for a sandbox that holds.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	var (
		secrets, sockets, writable string
		sidecar                    int
	)
	flag.StringVar(&secrets, "read", "", "comma-separated files that must not be readable")
	flag.StringVar(&sockets, "connect", "", "comma-separated unix sockets that must not be reachable")
	flag.StringVar(&writable, "write", "", "comma-separated directories that must not be writable")
	flag.IntVar(&sidecar, "sidecar", 0, "the sidecar's pid (host pid namespace)")
	unhide := flag.String("unhide", "", "(inside a new user and mount namespace) unmount what covers this file's directories and read it")
	flag.Parse()
	if *unhide != "" {
		os.Exit(unhideAndRead(*unhide))
	}

	for _, f := range split(secrets) {
		try("read "+f, func() error {
			_, err := os.ReadFile(f)
			return err
		})
		try("read "+f+" through /proc/1/root", func() error {
			_, err := os.ReadFile(filepath.Join("/proc/1/root", f))
			return err
		})
	}
	for _, s := range split(sockets) {
		try("connect "+s, func() error {
			c, err := net.DialTimeout("unix", s, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	for _, d := range append(split(writable), "/etc", "/usr/bin", "/", "/run/trellis/bin") {
		try("write in "+d, func() error { return os.WriteFile(filepath.Join(d, "escaped"), []byte("x"), 0o644) })
	}
	try("replace the trellis binary", func() error {
		return os.WriteFile("/run/trellis/bin/trellis", []byte("#!/bin/sh\n"), 0o755)
	})
	try("delete the capture rules", func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.DelTable(&nftables.Table{Name: "trellis-capture", Family: nftables.TableFamilyIPv4})
		return c.Flush()
	})
	try("add an nftables table", func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.AddTable(&nftables.Table{Name: "escape", Family: nftables.TableFamilyINet})
		return c.Flush()
	})
	try("add a route", func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("192.0.2.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst})
	})
	try("change eth0's address", func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.200.255.250/16")
		return netlink.AddrAdd(eth0, addr)
	})
	try("enter the host's network namespace", func() error { return setns("/proc/1/ns/net", unix.CLONE_NEWNET) })
	try("enter the host's mount namespace", func() error { return setns("/proc/1/ns/mnt", unix.CLONE_NEWNS) })
	try("enter the sidecar's mount namespace", func() error {
		return setns(fmt.Sprintf("/proc/%d/ns/mnt", sidecar), unix.CLONE_NEWNS)
	})
	try("ptrace the sidecar", func() error {
		if err := unix.PtraceAttach(sidecar); err != nil {
			return err
		}
		_ = unix.PtraceDetach(sidecar)
		return nil
	})
	try("signal the sidecar", func() error { return unix.Kill(sidecar, unix.SIGSTOP) })
	try("read the sidecar's memory", func() error {
		_, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sidecar))
		return err
	})
	try("mount over /etc", func() error {
		return unix.Mount("/tmp", "/etc", "", unix.MS_BIND, "")
	})
	try("load a kernel module", func() error {
		// Refused for want of CAP_SYS_MODULE (or a kernel without
		// modules), or else it got further.
		if err := unix.InitModule([]byte{0}, ""); errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) {
			return err
		}
		return nil
	})
	for _, f := range split(secrets) {
		// Mapping root needs CAP_SETFCAP, so without capabilities the
		// clone itself is refused; with them, the view's mounts are
		// locked in the new mount namespace.
		try("unmount what hides "+f+" in a user namespace of its own", func() error {
			cmd := exec.Command("/proc/self/exe", "-unhide", f)
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
				UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
				GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
			}
			return nil
		})
	}
	try("open a raw socket", func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	try("hold capabilities", func() error {
		status, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return nil // cannot tell: count it as allowed
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) == 2 && (f[0] == "CapEff:" || f[0] == "CapBnd:") && strings.Trim(f[1], "0") != "" {
				return nil
			}
			if line == "NoNewPrivs:\t0" {
				return nil
			}
		}
		return errors.New("no capabilities, no_new_privs set")
	})
	// What the pod is given: this must work.
	fmt.Printf("control write /tmp: %v\n", os.WriteFile("/tmp/given", []byte("x"), 0o644))
}

// unhideAndRead unmounts every mount that may cover file (the view's
// covers are mounted on one of its directories) and reads it: 0 when read.
func unhideAndRead(file string) int {
	for dir := filepath.Dir(file); dir != "/"; dir = filepath.Dir(dir) {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if _, err := os.ReadFile(file); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

func setns(path string, kind int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Setns(int(f.Fd()), kind)
}

func try(name string, attempt func() error) {
	if err := attempt(); err != nil {
		fmt.Printf("%s: blocked: %v\n", name, err)
		return
	}
	fmt.Printf("%s: ALLOWED\n", name)
}

func split(list string) []string {
	var out []string
	for _, f := range strings.Split(list, ",") {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}
