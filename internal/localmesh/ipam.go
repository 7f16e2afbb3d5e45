package localmesh

import (
	"fmt"
	"net/netip"
)

// ipam hands out addresses of one prefix, lowest free first. Not safe for
// concurrent use; the Runtime's mutex guards it.
type ipam struct {
	prefix netip.Prefix
	first  netip.Addr // lowest address handed out
	used   map[netip.Addr]bool
}

// newIPAM returns an allocator for prefix that skips its first skip
// addresses (the network address, a gateway).
func newIPAM(prefix netip.Prefix, skip int) *ipam {
	first := prefix.Addr()
	for range skip {
		first = first.Next()
	}
	return &ipam{prefix: prefix, first: first, used: map[netip.Addr]bool{}}
}

func (a *ipam) allocate() (netip.Addr, error) {
	for ip := a.first; a.prefix.Contains(ip); ip = ip.Next() {
		if !a.used[ip] && !isBroadcast(a.prefix, ip) {
			a.used[ip] = true
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("address range %s is exhausted; choose a larger one", a.prefix)
}

func (a *ipam) release(ip netip.Addr) { delete(a.used, ip) }

func isBroadcast(p netip.Prefix, ip netip.Addr) bool {
	return !p.Contains(ip.Next())
}
