package nft

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trellis-mesh/trellis/internal/netnstest"
)

// TestHostGuardKeepsOutsidersOut wires a "host" namespace with the pods'
// bridge (10.77.0.1/24, pod a at 10.77.0.2) and a second link to a "LAN"
// namespace that routes the pod range through the host, then checks who
// reaches pod a's port 8080 and the host's control-plane port 15012,
// before and after the host guard.
func TestHostGuardKeepsOutsidersOut(t *testing.T) {
	g := newGuardBed(t)
	lan := netnstest.New(t)
	netnstest.Run(t, g.host, func() error {
		br, _ := netlink.LinkByName("br0")
		addr, _ := netlink.ParseAddr("10.77.0.1/24")
		if err := netlink.AddrAdd(br, addr); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan1"}); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("lan0")
		addr, _ = netlink.ParseAddr("192.168.77.1/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		p, _ := netlink.LinkByName("lan1")
		if err := netlink.LinkSetNsFd(p, int(lan)); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	})
	netnstest.Run(t, lan, func() error {
		l, _ := netlink.LinkByName("lan1")
		addr, _ := netlink.ParseAddr("192.168.77.2/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		_, pods, _ := net.ParseCIDR("10.77.0.0/16")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: pods, Gw: net.ParseIP("192.168.77.1")})
	})
	netnstest.Run(t, g.a, func() error {
		eth, _ := netlink.LinkByName("tpa")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("10.77.0.1")})
	})
	serve(t, g.a, "10.77.0.2:8080", "pod")
	serve(t, g.host, "10.77.0.1:15012", "control")
	serve(t, g.host, "10.77.0.1:2222", "host service")

	reach := func(from netns.NsHandle, addr string) bool {
		got, err := dialTimeout(t, from, addr)
		return err == nil && got != ""
	}
	type check struct {
		name     string
		from     netns.NsHandle
		addr     string
		inside   bool // reachable with the guard in place
		asNobody bool // from a host process of uid 65534
	}
	checks := []check{
		{"LAN to pod", lan, "10.77.0.2:8080", false, false},
		{"LAN to control plane", lan, "10.77.0.1:15012", false, false},
		{"host root to pod", g.host, "10.77.0.2:8080", true, false},
		{"host non-root user to pod", g.host, "10.77.0.2:8080", false, true},
		{"pod to control plane", g.a, "10.77.0.1:15012", true, false},
		{"pod to another host service", g.a, "10.77.0.1:2222", false, false},
	}
	run := func(c check) bool {
		if c.asNobody {
			return curlAsNobody(t, c.from, "http://"+c.addr+"/")
		}
		return reach(c.from, c.addr)
	}
	for _, c := range checks { // without the guard everything is open
		// The links and listeners were made a moment ago, on a machine
		// that may be busy: give the first connection a few tries.
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			ok = run(c)
		}
		if !ok {
			t.Fatalf("%s (%s) fails without the host guard: the test bed is broken", c.name, c.addr)
		}
	}
	if err := ApplyHostGuard(Table{Name: "host-test", NetNS: int(g.host)}, HostGuard{
		Bridge: "br0", Ranges: []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24"), netip.MustParsePrefix("10.78.0.0/24")},
		Gateway: netip.MustParseAddr("10.77.0.1"), ControlPort: 15012,
	}); err != nil {
		t.Fatalf("ApplyHostGuard: %v", err)
	}
	for _, c := range checks {
		if got := run(c); got != c.inside {
			t.Errorf("%s (%s): reached = %v, want %v", c.name, c.addr, got, c.inside)
		}
	}
}

// dialTimeout connects to addr from inside ns within a second and returns
// what the server wrote.
func dialTimeout(t *testing.T, ns netns.NsHandle, addr string) (string, error) {
	t.Helper()
	var got string
	var dialErr error
	netnstest.Run(t, ns, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			dialErr = err
			return nil
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		got = string(buf[:n])
		return nil
	})
	return got, dialErr
}

// curlAsNobody reports whether a process of uid 65534 in ns connects to
// url (the server answers with a line, not HTTP: curl's exit 1 or 8 after
// connecting is success here; 7 and 28 mean no connection).
func curlAsNobody(t *testing.T, ns netns.NsHandle, url string) bool {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	var code int
	netnstest.Run(t, ns, func() error {
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "--max-time", "1", url)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			return err
		}
		return nil
	})
	return code != 7 && code != 28
}
