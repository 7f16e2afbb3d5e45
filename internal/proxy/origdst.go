package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotRedirected is returned by OriginalDst for a connection no NAT rule
// touched (the namespace has no capture rules, for example).
var ErrNotRedirected = errors.New("connection was not redirected")

// OriginalDst returns where a redirected connection was headed before the
// pod's capture rules sent it to the proxy (SO_ORIGINAL_DST, IPv4). For a
// connection that reached the proxy directly it returns the proxy's own
// address, or ErrNotRedirected when the kernel tracked no translation.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var addr netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		// The kernel writes a sockaddr_in; an IPv6Mreq is a 20-byte buffer
		// large enough to receive it.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if errors.Is(err, unix.ENOENT) {
			serr = ErrNotRedirected
			return
		}
		if err != nil {
			serr = err
			return
		}
		b := m.Multiaddr
		port := uint16(b[2])<<8 | uint16(b[3])
		addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of the connection from %s: %w", c.RemoteAddr(), err)
	}
	return addr, nil
}

// MarkedDialer returns a dialer whose sockets carry mark, so the pod's
// capture rules let the proxy's own connections through; mark 0: a plain
// dialer.
func MarkedDialer(mark int) *net.Dialer {
	if mark == 0 {
		return &net.Dialer{}
	}
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		})
		if err != nil {
			return err
		}
		return serr
	}}
}
