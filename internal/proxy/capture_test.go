package proxy

// Real-kernel test of transparent capture: two network namespaces joined by
// a veth pair, capture rules in the "pod" one, and listeners on the proxy's
// ports reading SO_ORIGINAL_DST. Needs root; skips without it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trellis-mesh/trellis/internal/netnstest"
	"github.com/trellis-mesh/trellis/internal/nft"
)

const testMark = 0x539

// twoNamespaces makes "client" (10.97.0.1) and "pod" (10.97.0.2) joined by
// a veth pair, each with lo up and a route to 10.98.0.0/24 (service VIPs)
// via the other.
func twoNamespaces(t *testing.T) (client, pod netns.NsHandle) {
	t.Helper()
	client, pod = netnstest.New(t), netnstest.New(t)
	netnstest.Run(t, client, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "c0"}, PeerName: "p0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("p0")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(peer, int(pod))
	})
	for _, side := range []struct {
		ns       netns.NsHandle
		link, ip string
		gw       string
	}{{client, "c0", "10.97.0.1/24", "10.97.0.2"}, {pod, "p0", "10.97.0.2/24", "10.97.0.1"}} {
		netnstest.Run(t, side.ns, func() error {
			for _, name := range []string{"lo", side.link} {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			l, _ := netlink.LinkByName(side.link)
			addr, _ := netlink.ParseAddr(side.ip)
			if err := netlink.AddrAdd(l, addr); err != nil {
				return err
			}
			_, vips, _ := net.ParseCIDR("10.98.0.0/24")
			return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: vips, Gw: net.ParseIP(side.gw)})
		})
	}
	return client, pod
}

// listen accepts on addr inside ns and reports each connection's original
// destination, or "direct" when it was not redirected.
func listen(t *testing.T, ns netns.NsHandle, addr string) <-chan string {
	t.Helper()
	var ln net.Listener
	netnstest.Run(t, ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err })
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, err := OriginalDst(c.(*net.TCPConn))
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			switch {
			case errors.Is(err, ErrNotRedirected):
				got <- "direct"
			case err != nil:
				got <- "error: " + err.Error()
			case dst == netip.AddrPortFrom(local.Addr().Unmap(), local.Port()):
				got <- "direct"
			default:
				got <- dst.String()
			}
			io.WriteString(c, "hi")
			c.Close()
		}
	}()
	return got
}

func dialFrom(t *testing.T, ns netns.NsHandle, addr string, d *net.Dialer) error {
	t.Helper()
	var derr error
	netnstest.Run(t, ns, func() error {
		d.Timeout = 2 * time.Second
		c, err := d.Dial("tcp", addr)
		if err != nil {
			derr = err
			return nil
		}
		defer c.Close()
		_, derr = io.ReadAll(c)
		return nil
	})
	return derr
}

func expect(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Errorf("listener saw %q, want %q", got, want)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("listener saw nothing, want %q", want)
	}
}

func TestTransparentCapture(t *testing.T) {
	client, pod := twoNamespaces(t)
	fd := int(pod)
	err := nft.ApplyCapture(nft.Table{Name: "trellis-capture", NetNS: fd}, nft.Capture{
		OutboundPort: 15001, InboundPort: 15006, ProxyMark: testMark,
		ProxyPorts: []uint16{15021}, ExcludeInbound: []uint16{22}, ExcludeOutbound: []uint16{5432},
		ExcludeOutboundRanges: []netip.Prefix{netip.MustParsePrefix("10.98.0.128/25")},
	})
	if err != nil {
		t.Fatalf("ApplyCapture() = %v", err)
	}
	outbound := listen(t, pod, ":15001")
	inbound := listen(t, pod, ":15006")
	health := listen(t, pod, ":15021")
	app := listen(t, pod, "127.0.0.1:8080")
	excluded := listen(t, pod, ":22")
	podApp := listen(t, pod, "10.97.0.2:8081")
	remote := listen(t, client, ":9080")
	remoteDB := listen(t, client, ":5432")

	t.Run("outbound from the app goes to 15001 with its destination", func(t *testing.T) {
		if err := dialFrom(t, pod, "10.98.0.7:9080", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, outbound, "10.98.0.7:9080")
	})
	t.Run("the proxy's own marked connections are not captured", func(t *testing.T) {
		if err := dialFrom(t, pod, "10.97.0.1:9080", MarkedDialer(testMark)); err != nil {
			t.Fatal(err)
		}
		expect(t, remote, "direct")
	})
	t.Run("excluded outbound port passes", func(t *testing.T) {
		if err := dialFrom(t, pod, "10.97.0.1:5432", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, remoteDB, "direct")
	})
	t.Run("an excluded outbound range passes; the rest of the VIPs do not", func(t *testing.T) {
		netnstest.Run(t, client, func() error { // the client answers for one address of the range
			l, err := netlink.LinkByName("c0")
			if err != nil {
				return err
			}
			addr, _ := netlink.ParseAddr("10.98.0.200/32")
			return netlink.AddrAdd(l, addr)
		})
		if err := dialFrom(t, pod, "10.98.0.200:9080", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, remote, "direct")
		if err := dialFrom(t, pod, "10.98.0.127:9080", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, outbound, "10.98.0.127:9080")
	})
	t.Run("localhost inside the pod is not captured", func(t *testing.T) {
		if err := dialFrom(t, pod, "127.0.0.1:8080", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, app, "direct")
	})
	t.Run("the proxy's own connection to its pod's address goes to 15006 with the port", func(t *testing.T) {
		// A client of one of the pod's own Services sent to the pod
		// itself, over mTLS, as a call from another pod would come.
		if err := dialFrom(t, pod, "10.97.0.2:8081", MarkedDialer(testMark)); err != nil {
			t.Fatal(err)
		}
		expect(t, inbound, "10.97.0.2:8081")
		// Its ports that prerouting leaves alone stay alone.
		if err := dialFrom(t, pod, "10.97.0.2:15021", MarkedDialer(testMark)); err != nil {
			t.Fatal(err)
		}
		expect(t, health, "direct")
	})
	t.Run("the inbound's connection to the app, from 127.0.0.6, reaches it", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		netnstest.Run(t, pod, func() error {
			c, err := connectApp(ctx, "10.97.0.2:8081")
			if err != nil {
				return err
			}
			if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.6" {
				t.Errorf("the inbound's connection to the app comes from %s, want 127.0.0.6", got)
			}
			_, err = io.ReadAll(c)
			c.Close()
			return err
		})
		expect(t, podApp, "direct")
	})
	t.Run("the inbound's closed connections to the app do not run the pod out of ports", func(t *testing.T) {
		// 20 source ports (not the 28 232 Linux has): each connection the
		// proxy closes first leaves a TIME_WAIT for 60 s. A port bound
		// before connect would be held against every destination: after
		// 20, neither another app port nor any outbound connection would
		// get one.
		netnstest.Run(t, pod, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40019"), 0o644)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		other := listen(t, pod, "10.97.0.2:8082")
		// An app that closes only after the proxy has: the TIME_WAITs are
		// the proxy's.
		var patient net.Listener
		netnstest.Run(t, pod, func() (err error) { patient, err = net.Listen("tcp", "10.97.0.2:8083"); return err })
		defer patient.Close()
		go func() {
			for {
				c, err := patient.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		for range 20 {
			netnstest.Run(t, pod, func() error {
				c, err := connectApp(ctx, "10.97.0.2:8083")
				if err != nil {
					return err
				}
				return c.Close()
			})
		}
		time.Sleep(100 * time.Millisecond) // the app's side closes too
		netnstest.Run(t, pod, func() error {
			c, err := connectApp(ctx, "10.97.0.2:8082")
			if err != nil {
				return fmt.Errorf("an app connection after 20 closed ones: %w", err)
			}
			_, err = io.ReadAll(c)
			c.Close()
			return err
		})
		expect(t, other, "direct")
		if err := dialFrom(t, pod, "10.97.0.1:9080", MarkedDialer(testMark)); err != nil {
			t.Errorf("an outbound connection after 20 closed app connections: %v", err)
		}
		expect(t, remote, "direct")
	})
	t.Run("the app's connection to its own pod's address reaches it", func(t *testing.T) {
		if err := dialFrom(t, pod, "10.97.0.2:8081", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, podApp, "direct")
	})
	t.Run("inbound to an app port goes to 15006 with the port", func(t *testing.T) {
		if err := dialFrom(t, client, "10.97.0.2:8080", &net.Dialer{}); err != nil {
			t.Fatal(err)
		}
		expect(t, inbound, "10.97.0.2:8080")
	})
	t.Run("proxy ports and excluded inbound ports are reached directly", func(t *testing.T) {
		for _, c := range []struct {
			addr string
			ch   <-chan string
		}{{"10.97.0.2:15021", health}, {"10.97.0.2:22", excluded}} {
			if err := dialFrom(t, client, c.addr, &net.Dialer{}); err != nil {
				t.Fatal(err)
			}
			expect(t, c.ch, "direct")
		}
	})
	t.Run("a connection that was not redirected has no original destination", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { c, _ := net.Dial("tcp", ln.Addr().String()); time.Sleep(100 * time.Millisecond); c.Close() }()
		c, _ := ln.Accept()
		defer c.Close()
		dst, err := OriginalDst(c.(*net.TCPConn))
		if !errors.Is(err, ErrNotRedirected) && (err != nil || dst.String() != c.LocalAddr().String()) {
			t.Errorf("OriginalDst(direct) = %s, %v; want the local address or ErrNotRedirected", dst, err)
		}
	})
	if err := nft.ApplyCapture(nft.Table{Name: "x", NetNS: fd}, nft.Capture{}); fmt.Sprint(err) != "capture: the proxy's uid or mark, outbound and inbound ports must be set" {
		t.Errorf("ApplyCapture(zero) = %v", err)
	}
}
