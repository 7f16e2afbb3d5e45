package nft

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trellis-mesh/trellis/internal/netnstest"
)

// guardBed is a "host" namespace with a bridge and two "pods", each a
// namespace joined to the bridge by a veth, as the one-host runtime wires
// them: pod a is 10.77.0.2, pod b 10.77.0.3, both with IPv6 on.
type guardBed struct {
	host, a, b netns.NsHandle
	ports      []GuardPort
}

func newGuardBed(t *testing.T) *guardBed {
	t.Helper()
	g := &guardBed{host: netnstest.New(t), a: netnstest.New(t), b: netnstest.New(t)}
	netnstest.Run(t, g.host, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		for i, pod := range []netns.NsHandle{g.a, g.b} {
			host, peer := []string{"tva", "tvb"}[i], []string{"tpa", "tpb"}[i]
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer}); err != nil {
				return err
			}
			l, _ := netlink.LinkByName(host)
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			p, _ := netlink.LinkByName(peer)
			if err := netlink.LinkSetNsFd(p, int(pod)); err != nil {
				return err
			}
			g.ports = append(g.ports, GuardPort{Link: host, Addr: netip.AddrFrom4([4]byte{10, 77, 0, byte(2 + i)})})
		}
		return nil
	})
	for i, pod := range []netns.NsHandle{g.a, g.b} {
		netnstest.Run(t, pod, func() error {
			eth, err := netlink.LinkByName([]string{"tpa", "tpb"}[i])
			if err != nil {
				return err
			}
			for _, a := range []string{g.ports[i].Addr.String() + "/24", []string{"fd00::a/64", "fd00::b/64"}[i]} {
				addr, _ := netlink.ParseAddr(a)
				addr.Flags = syscall.IFA_F_NODAD
				if err := netlink.AddrAdd(eth, addr); err != nil {
					return err
				}
			}
			g.ports[i].MAC = eth.Attrs().HardwareAddr
			lo, _ := netlink.LinkByName("lo")
			_ = netlink.LinkSetUp(lo)
			return netlink.LinkSetUp(eth)
		})
	}
	return g
}

// received reports whether a UDP datagram sent from pod a (bound to src,
// to dst) reaches a listener on b's port 9999.
func (g *guardBed) received(t *testing.T, src, dst string) bool {
	t.Helper()
	var ln *net.UDPConn
	netnstest.Run(t, g.b, func() (err error) {
		network := "udp4"
		if netip.MustParseAddr(dst).Is6() {
			network = "udp6"
		}
		ln, err = net.ListenUDP(network, &net.UDPAddr{Port: 9999})
		return err
	})
	defer ln.Close()
	netnstest.Run(t, g.a, func() error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}, Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1) })
		}}
		c, err := d.Dial("udp", net.JoinHostPort(dst, "9999"))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			_, _ = c.Write([]byte("hello"))
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	})
	_ = ln.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	_, _, err := ln.ReadFromUDP(make([]byte, 64))
	return err == nil
}

// receivedRaw writes UDP datagrams as whole Ethernet frames from pod a to
// b's MAC, from a's own address to dst's port 9999, with a VLAN tag (VID 0,
// as priority tagging) when tagged, and reports whether b's listener got
// one: the frames a socket cannot make.
func (g *guardBed) receivedRaw(t *testing.T, dst string, tagged bool) bool {
	t.Helper()
	var ln *net.UDPConn
	netnstest.Run(t, g.b, func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 9999})
		return err
	})
	defer ln.Close()
	src, to := g.ports[0].Addr.As4(), netip.MustParseAddr(dst).As4()
	ip := []byte{0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, syscall.IPPROTO_UDP, 0, 0}
	ip = append(append(ip, src[:]...), to[:]...)
	sum := 0
	for i := 0; i < len(ip); i += 2 {
		sum += int(ip[i])<<8 | int(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
	udp := []byte{0x30, 0x39, 0x27, 0x0f, 0, 13, 0, 0, 'h', 'e', 'l', 'l', 'o'} // 12345 -> 9999, no checksum
	frame := append(append([]byte{}, g.ports[1].MAC...), g.ports[0].MAC...)
	if tagged {
		frame = append(frame, 0x81, 0x00, 0, 0)
	}
	frame = append(append(append(frame, 0x08, 0x00), ip...), udp...)
	netnstest.Run(t, g.a, func() error {
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		eth, err := net.InterfaceByName("tpa")
		if err != nil {
			return err
		}
		for range 3 {
			if err := syscall.Sendto(fd, frame, 0, &syscall.SockaddrLinklayer{Ifindex: eth.Index, Halen: 6}); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	})
	_ = ln.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	_, _, err := ln.ReadFromUDP(make([]byte, 64))
	return err == nil
}

func TestGuardDropsSpoofingBroadcastAndIPv6(t *testing.T) {
	g := newGuardBed(t)
	table := Table{Name: "guard-test", NetNS: int(g.host)}
	if err := CreateGuard(table, Guard{Broadcast: netip.MustParseAddr("10.77.0.255")}, nil); err != nil {
		t.Fatalf("CreateGuard: %v", err)
	}
	if g.received(t, "10.77.0.2", "10.77.0.3") {
		t.Fatal("a link the guard does not know carried a datagram")
	}
	if err := SetGuardPorts(table, g.ports); err != nil {
		t.Fatalf("SetGuardPorts: %v", err)
	}
	if !g.received(t, "10.77.0.2", "10.77.0.3") {
		t.Fatal("a pod's own address to its neighbour did not get through")
	}
	netnstest.Run(t, g.a, func() error {
		eth, _ := netlink.LinkByName("tpa")
		addr, _ := netlink.ParseAddr("10.77.0.99/32")
		return netlink.AddrAdd(eth, addr)
	})
	for _, tc := range []struct{ name, src, dst, counter string }{
		{"forged source", "10.77.0.99", "10.77.0.3", GuardSpoofed},
		{"subnet broadcast", "10.77.0.2", "10.77.0.255", GuardBroadcast},
		{"multicast", "10.77.0.2", "224.0.0.1", GuardBroadcast},
		{"IPv6", "fd00::a", "fd00::b", GuardIPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := GuardCounts(table)
			if err != nil {
				t.Fatal(err)
			}
			if g.received(t, tc.src, tc.dst) {
				t.Errorf("%s -> %s got through the guard", tc.src, tc.dst)
			}
			after, err := GuardCounts(table)
			if err != nil {
				t.Fatal(err)
			}
			if after[tc.counter] <= before[tc.counter] {
				t.Errorf("counter %s = %d after, %d before: the drop was not counted", tc.counter, after[tc.counter], before[tc.counter])
			}
		})
	}
}

// Scoped (a Kubernetes node): links the guard was not told of are left
// alone, as other bridges' ports are; a named link gets the whole guard.
func TestScopedGuardGuardsOnlyNamedLinks(t *testing.T) {
	g := newGuardBed(t)
	table := Table{Name: "guard-test", NetNS: int(g.host)}
	if err := CreateGuard(table, Guard{Scoped: true}, nil); err != nil {
		t.Fatalf("CreateGuard: %v", err)
	}
	if err := SetGuardPorts(table, nil); err != nil {
		t.Fatalf("SetGuardPorts(none): %v", err)
	}
	if !g.received(t, "fd00::a", "fd00::b") {
		t.Fatal("a link the scoped guard was not told of lost its traffic")
	}
	// What the raw frames below do unguarded: b takes them.
	if !g.receivedRaw(t, "10.77.0.3", true) || !g.receivedRaw(t, "10.77.0.255", false) {
		t.Fatal("unguarded, b did not take a tagged frame or a directed broadcast to its MAC: the checks below prove nothing")
	}
	a := g.ports[0]
	a.Broadcast = netip.MustParseAddr("10.77.0.255") // from the pod's CNI result, 10.77.0.2/24
	if err := SetGuardPorts(table, []GuardPort{a}); err != nil {
		t.Fatalf("SetGuardPorts: %v", err)
	}
	if !g.received(t, "10.77.0.2", "10.77.0.3") {
		t.Fatal("a guarded pod's own address to its neighbour did not get through")
	}
	netnstest.Run(t, g.a, func() error {
		eth, _ := netlink.LinkByName("tpa")
		addr, _ := netlink.ParseAddr("10.77.0.99/32")
		return netlink.AddrAdd(eth, addr)
	})
	for _, tc := range []struct {
		name, src, dst, counter string
		raw, tagged             bool
	}{
		{name: "forged source", src: "10.77.0.99", dst: "10.77.0.3", counter: GuardSpoofed},
		{name: "multicast", src: "10.77.0.2", dst: "224.0.0.1", counter: GuardBroadcast},
		{name: "IPv6", src: "fd00::a", dst: "fd00::b", counter: GuardIPv6},
		{name: "VLAN-tagged", dst: "10.77.0.3", counter: GuardOther, raw: true, tagged: true},
		{name: "subnet broadcast to one MAC", dst: "10.77.0.255", counter: GuardBroadcast, raw: true},
	} {
		before, err := GuardCounts(table)
		if err != nil {
			t.Fatal(err)
		}
		if tc.raw && g.receivedRaw(t, tc.dst, tc.tagged) || !tc.raw && g.received(t, tc.src, tc.dst) {
			t.Errorf("%s: to %s got through the guard", tc.name, tc.dst)
		}
		if after, err := GuardCounts(table); err != nil || after[tc.counter] <= before[tc.counter] {
			t.Errorf("%s: counter %s = %d after, %d before (%v): the drop was not counted", tc.name, tc.counter, after[tc.counter], before[tc.counter], err)
		}
	}
}
