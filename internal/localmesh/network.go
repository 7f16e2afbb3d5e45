package localmesh

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Where named network namespaces and their per-namespace /etc files live:
// the places `ip netns` uses, so `ip netns exec` sees pods as trellis does.
const (
	netnsRunDir = "/var/run/netns"
	netnsEtcDir = "/etc/netns"
)

// Sysctls the runtime needs while a mesh runs; the old values come back on
// teardown. bridge-nf-call-iptables makes bridged packets between pods cross
// the host's nftables hooks, so replies to DNATed service traffic are
// translated back.
var meshSysctls = []string{
	"/proc/sys/net/ipv4/ip_forward",
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
}

// CheckRanges refuses pod and service ranges that overlap each other or any
// route on the host (other than a default route), so pod traffic can never
// shadow a network the host already reaches.
func CheckRanges(podCIDR, serviceCIDR netip.Prefix) error {
	if !podCIDR.Addr().Is4() || !serviceCIDR.Addr().Is4() {
		return errors.New("pod and service ranges must be IPv4 prefixes")
	}
	if podCIDR.Bits() > 28 {
		return fmt.Errorf("pod range %s is too small; use a /28 or larger", podCIDR)
	}
	if serviceCIDR.Bits() > 30 {
		return fmt.Errorf("service range %s is too small; use a /30 or larger", serviceCIDR)
	}
	if podCIDR.Overlaps(serviceCIDR) {
		return fmt.Errorf("pod range %s overlaps service range %s; choose disjoint ranges with --pod-cidr and --service-cidr", podCIDR, serviceCIDR)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(dst.Unmap(), ones)
		if ones == 0 {
			continue
		}
		for _, c := range []struct {
			name, flag string
			pfx        netip.Prefix
		}{
			{"pod", "--pod-cidr", podCIDR}, {"service", "--service-cidr", serviceCIDR},
		} {
			if c.pfx.Overlaps(p) {
				return fmt.Errorf("%s range %s overlaps the host route %s%s; choose a free range with %s",
					c.name, c.pfx, p, routeDev(r), c.flag)
			}
		}
	}
	return nil
}

func routeDev(r netlink.Route) string {
	if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		return " (dev " + l.Attrs().Name + ")"
	}
	return ""
}

// setSysctls sets each of meshSysctls to 1, recording old values first.
func setSysctls(l *Ledger) error {
	for _, path := range meshSysctls {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && strings.Contains(path, "/bridge/") {
			// The bridge hooks live in br_netfilter; load it if we can.
			_ = exec.Command("modprobe", "br_netfilter").Run()
		}
		old, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w (is the br_netfilter kernel module available?)", path, err)
		}
		if err := l.Add(Resource{Kind: resSysctl, Name: path, Old: strings.TrimSpace(string(old))}); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("set %s: %w", path, err)
		}
	}
	return nil
}

// createBridge creates the host bridge with gw as the pods' gateway address.
func createBridge(l *Ledger, name string, gw netip.Prefix) error {
	// Our own leftovers are gone by now (Run undoes the ledger first), so
	// an existing link belongs to someone else: never take it over.
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("link %s already exists: another mesh runs on this host (stop it with `trellis down --state-dir DIR`), or remove the link", name)
	}
	if err := l.Add(Resource{Kind: resLink, Name: name}); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(gw)}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("address bridge %s: %w", name, err)
	}
	if err := disableIPv6(name); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	return nil
}

// podNet describes one pod's wiring.
type podNet struct {
	Netns    string       // named network namespace
	HostLink string       // host side of the veth pair
	Bridge   string       // bridge the host side is enslaved to
	Addr     netip.Prefix // pod address with the pod range's prefix length
	Gateway  netip.Addr   // the bridge's address
	// MAC is the pod's eth0 address, set by createPodNetwork.
	MAC net.HardwareAddr
}

// linkName derives a short, stable interface name (at most 15 bytes) from a
// namespace name.
func linkName(prefix, netnsName string) string {
	h := fnv.New32a()
	h.Write([]byte(netnsName))
	return fmt.Sprintf("%s%08x", prefix, h.Sum32())
}

// createPodNetwork creates the pod's network namespace and veth pair and
// configures addresses and routes inside it, with IPv6 off on both ends of
// the link. Every step is recorded in the ledger first. It sets pn.MAC.
func createPodNetwork(l *Ledger, pn *podNet) error {
	if _, err := os.Stat(filepath.Join(netnsRunDir, pn.Netns)); err == nil {
		return fmt.Errorf("network namespace %s already exists and is not ours; remove it (ip netns delete %s) or stop the mesh that made it", pn.Netns, pn.Netns)
	}
	if err := l.Add(Resource{Kind: resNetns, Name: pn.Netns}); err != nil {
		return err
	}
	if err := newNamedNetns(pn.Netns); err != nil {
		return err
	}
	if err := l.Add(Resource{Kind: resLink, Name: pn.HostLink}); err != nil {
		return err
	}
	peer := linkName("tp", pn.Netns)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pn.HostLink}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", pn.HostLink, err)
	}
	br, err := netlink.LinkByName(pn.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", pn.Bridge, err)
	}
	host, err := netlink.LinkByName(pn.HostLink)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", pn.HostLink, err)
	}
	if err := netlink.LinkSetMaster(host, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", pn.HostLink, pn.Bridge, err)
	}
	// Hairpin: a pod reaching itself through a service VIP has its packets
	// DNATed on the way in and sent back out of the port they came from.
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("hairpin mode on %s: %w", pn.HostLink, err)
	}
	if err := disableIPv6(pn.HostLink); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring up %s: %w", pn.HostLink, err)
	}
	ns, err := netns.GetFromName(pn.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", pn.Netns, err)
	}
	defer ns.Close()
	// Before eth0 arrives, so it never has an IPv6 address, even briefly.
	if err := inNetns(ns, podSysctls); err != nil {
		return fmt.Errorf("pod sysctls in %s: %w", pn.Netns, err)
	}
	peerLink, err := netlink.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find veth peer %s: %w", peer, err)
	}
	if err := netlink.LinkSetNsFd(peerLink, int(ns)); err != nil {
		return fmt.Errorf("move %s into %s: %w", peer, pn.Netns, err)
	}
	if err := configurePodSide(ns, peer, pn); err != nil {
		return err
	}
	return inNetns(ns, func() error { return disableIPv6("eth0") })
}

// configurePodSide names the pod's interface eth0, addresses it, and brings
// up lo and eth0 with a default route via the bridge. It sets pn.MAC.
func configurePodSide(ns netns.NsHandle, peer string, pn *podNet) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", pn.Netns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", pn.Netns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", pn.Netns, err)
	}
	eth, err := h.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", peer, pn.Netns, err)
	}
	if err := h.LinkSetName(eth, "eth0"); err != nil {
		return fmt.Errorf("rename %s to eth0 in %s: %w", peer, pn.Netns, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(pn.Addr)}); err != nil {
		return fmt.Errorf("address eth0 in %s: %w", pn.Netns, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up eth0 in %s: %w", pn.Netns, err)
	}
	pn.MAC = eth.Attrs().HardwareAddr
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(pn.Gateway.AsSlice())}
	if err := h.RouteAdd(def); err != nil {
		return fmt.Errorf("default route in %s: %w", pn.Netns, err)
	}
	return nil
}

// Pods get no IPv6 (docs/network-policy.md): the policy, capture and
// guard rules are IPv4 only, so an IPv6 path would go around all of them.
// In each pod's namespace IPv6 is off on every interface but lo (whose ::1
// reaches nothing outside the pod), router advertisements are ignored, and
// any uid may bind ports below 1024, as in a container runtime's pods.
var podSysctlValues = []struct{ path, value string }{
	{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"},
	{"/proc/sys/net/ipv6/conf/default/accept_ra", "0"},
	{"/proc/sys/net/ipv6/conf/all/accept_ra", "0"},
	{"/proc/sys/net/ipv6/conf/default/autoconf", "0"},
	{"/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"},
}

// podSysctls sets podSysctlValues; it runs in the pod's namespace.
func podSysctls() error {
	for _, s := range podSysctlValues {
		if err := writeSysctl(s.path, s.value); err != nil {
			return err
		}
	}
	return nil
}

// disableIPv6 turns IPv6 off on a link of the caller's namespace.
func disableIPv6(link string) error {
	return writeSysctl(filepath.Join("/proc/sys/net/ipv6/conf", link, "disable_ipv6"), "1")
}

func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(value + "\n"); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// inNetns runs fn on a thread switched into ns; the thread is discarded
// afterwards, so no other goroutine ever runs in that namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// newNamedNetns creates a network namespace pinned at /var/run/netns/name.
// It switches a dedicated OS thread, which is discarded afterwards, so no
// other goroutine ever runs in the new namespace.
func newNamedNetns(name string) error {
	if err := os.MkdirAll(netnsRunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsRunDir, err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		ns.Close()
		errc <- nil
	}()
	return <-errc
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
