package nft

// Real-kernel tests: each builds a fresh network namespace, applies the
// service table there, and checks what the kernel holds and how it treats
// connections. They need root and skip without it.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trellis-mesh/trellis/internal/netnstest"
)

// testNetns creates a network namespace with lo up holding addrs (the
// endpoints' addresses) and a route to the VIP range 10.98.0.0/24.
func testNetns(t *testing.T, addrs ...string) netns.NsHandle {
	t.Helper()
	ns := netnstest.New(t)
	netnstest.Run(t, ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range addrs {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// Locally sent packets are routed before the nat output hook, so the
		// VIP range needs a route, as a pod's default route gives it.
		_, vips, _ := net.ParseCIDR("10.98.0.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: vips})
	})
	return ns
}

// serve accepts connections on addr inside ns and writes reply to each.
func serve(t *testing.T, ns netns.NsHandle, addr, reply string) {
	t.Helper()
	var ln net.Listener
	netnstest.Run(t, ns, func() (err error) {
		ln, err = net.Listen("tcp", addr) // the socket stays in ns
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply)
			c.Close()
		}
	}()
}

// dial connects to addr from inside ns and returns what the server wrote.
func dial(t *testing.T, ns netns.NsHandle, addr string) (string, error) {
	t.Helper()
	var got string
	var dialErr error
	netnstest.Run(t, ns, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			dialErr = err
			return nil
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		got, dialErr = string(b), err
		return nil
	})
	return got, dialErr
}

func TestApplyServicesBalancesAndRejects(t *testing.T) {
	ns := testNetns(t, "10.99.0.2/32", "10.99.0.3/32")
	serve(t, ns, "10.99.0.2:8080", "a")
	serve(t, ns, "10.99.0.3:8080", "b")
	table := Table{Name: "trellis-test", NetNS: int(ns)}
	ports := []ServicePort{
		{Name: "web/hello:80", VIP: netip.MustParseAddr("10.98.0.1"), Port: 80, Protocol: "TCP",
			Endpoints: []Endpoint{{netip.MustParseAddr("10.99.0.2"), 8080}, {netip.MustParseAddr("10.99.0.3"), 8080}}},
		{Name: "web/empty:80", VIP: netip.MustParseAddr("10.98.0.2"), Port: 80, Protocol: "TCP"},
	}
	if err := ApplyServices(table, ports); err != nil {
		t.Fatalf("ApplyServices() = %v", err)
	}

	seen := map[string]int{}
	for range 40 {
		got, err := dial(t, ns, "10.98.0.1:80")
		if err != nil {
			t.Fatalf("dial VIP: %v", err)
		}
		seen[got]++
	}
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("40 connections to the VIP reached %v, want both endpoints", seen)
	}

	start := time.Now()
	_, err := dial(t, ns, "10.98.0.2:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial a service without endpoints: err = %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %s, want it at once", d)
	}

	// Replacing the table is atomic and leaves exactly one table behind.
	ports[0].Endpoints = ports[0].Endpoints[:1]
	if err := ApplyServices(table, ports); err != nil {
		t.Fatalf("ApplyServices() again = %v", err)
	}
	for range 10 {
		if got, err := dial(t, ns, "10.98.0.1:80"); err != nil || got != "a" {
			t.Fatalf("after shrinking to one endpoint, dial = %q, %v; want a", got, err)
		}
	}
	tables, err := Tables(int(ns), "trellis")
	if err != nil || len(tables) != 1 {
		t.Fatalf("Tables() = %v, %v; want exactly [trellis-test]", tables, err)
	}
	if err := DeleteTable(table); err != nil {
		t.Fatalf("DeleteTable() = %v", err)
	}
	if err := DeleteTable(table); err != nil {
		t.Fatalf("DeleteTable() of a missing table = %v, want nil", err)
	}
	if tables, _ := Tables(int(ns), "trellis"); len(tables) != 0 {
		t.Errorf("after DeleteTable, tables = %v", tables)
	}
}

func TestApplyServicesChainsPerEndpoint(t *testing.T) {
	ns := testNetns(t)
	table := Table{Name: "trellis-shape", NetNS: int(ns)}
	var eps []Endpoint
	for i := range 5 {
		eps = append(eps, Endpoint{netip.AddrFrom4([4]byte{10, 99, 0, byte(10 + i)}), 80})
	}
	err := ApplyServices(table, []ServicePort{{Name: "a/b:80", VIP: netip.MustParseAddr("10.98.0.9"), Port: 80, Protocol: "UDP", Endpoints: eps}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	// services, 3 nat hooks, 2 filter hooks, one service chain, 5 endpoints.
	if want := 1 + 3 + 2 + 1 + 5; len(chains) != want {
		var names []string
		for _, ch := range chains {
			names = append(names, ch.Name)
		}
		t.Errorf("chains = %v (%d), want %d", names, len(chains), want)
	}
	err = ApplyServices(table, []ServicePort{{Name: "bad", VIP: netip.MustParseAddr("10.98.0.9"), Port: 80, Protocol: "ICMP"}})
	if err == nil || err.Error() != fmt.Sprintf("service bad: protocol %q: use TCP, UDP or SCTP", "ICMP") {
		t.Errorf("ApplyServices(ICMP) error = %v, want a protocol error", err)
	}
}
