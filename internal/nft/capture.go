package nft

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Capture is transparent interception inside one pod's network namespace,
// the job istio-iptables does: the app's outbound TCP goes to the proxy's
// outbound port and inbound TCP to its inbound port; the proxy reads the
// original destination with SO_ORIGINAL_DST.
type Capture struct {
	OutboundPort uint16 // where outbound TCP is redirected (15001)
	InboundPort  uint16 // where inbound TCP is redirected (15006)
	// ProxyUID and ProxyMark pick out the proxy's own sockets, whose
	// traffic is never captured (or the proxy would capture itself): the
	// host uid the proxy runs as (Istio's way: sockets of that uid pass)
	// and a socket mark it sets (which needs CAP_NET_ADMIN over the pod's
	// network). Zero: not used. At least one must be set.
	ProxyUID  uint32
	ProxyMark uint32
	// ProxyPorts are ports of the proxy reached directly from outside
	// (health, metrics); they are not redirected inbound.
	ProxyPorts []uint16
	// ExcludeInbound and ExcludeOutbound are ports left alone, as Istio's
	// excludeInboundPorts / excludeOutboundPorts annotations say.
	ExcludeInbound, ExcludeOutbound []uint16
	// ExcludeOutboundRanges are IPv4 destinations left alone, as Istio's
	// excludeOutboundIPRanges annotation says.
	ExcludeOutboundRanges []netip.Prefix
}

// ApplyCapture replaces table (in the pod's namespace) with c's rules, in
// one transaction:
//
//	nat output:     to lo from InboundSource -> return;
//	                proxy's uid or mark to lo, not to 127/8 -> (proxy ports and excluded dports -> return; tcp -> redirect :InboundPort);
//	                proxy's uid or mark -> return; to lo -> return; excluded dport or range -> return; tcp -> redirect :OutboundPort
//	nat prerouting: proxy ports and excluded dports -> return; tcp -> redirect :InboundPort
func ApplyCapture(table Table, c Capture) error {
	if (c.ProxyMark == 0 && c.ProxyUID == 0) || c.OutboundPort == 0 || c.InboundPort == 0 {
		return fmt.Errorf("capture: the proxy's uid or mark, outbound and inbound ports must be set")
	}
	conn, err := table.conn()
	if err != nil {
		return err
	}
	t := replaceTable(conn, table.Name, nftables.TableFamilyIPv4)
	b := &builder{c: conn, t: t}
	ret := &expr.Verdict{Kind: expr.VerdictReturn}

	// The proxy's own sockets, by uid or by mark.
	var proxy [][]expr.Any
	if c.ProxyUID != 0 {
		proxy = append(proxy, []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(c.ProxyUID)},
		})
	}
	if c.ProxyMark != 0 {
		proxy = append(proxy, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(c.ProxyMark), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(c.ProxyMark)},
		})
	}
	// A client of one of the pod's own Services may be sent to the pod
	// itself: the proxy's mTLS connection to the pod's address goes over
	// lo, which prerouting never sees, so it is sent to the inbound port
	// here, unless its port is one prerouting leaves alone. The
	// inbound's own connections to the app come from InboundSource and
	// pass.
	inboundPorts := append(append([]uint16{c.InboundPort, c.OutboundPort}, c.ProxyPorts...), c.ExcludeInbound...)
	self := b.chain("self", nftables.ChainTypeNAT, nil, nil)
	for _, p := range inboundPorts {
		b.rule(self, append(tcpDport(p), ret)...)
	}
	b.rule(self, redirectTCP(c.InboundPort)...)
	out := b.chain("output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	toLo := []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")}}
	b.rule(out, append(append(slices.Clone(toLo), saddrIs(InboundSource)...), ret)...)
	for _, own := range proxy {
		b.rule(out, append(append(append(slices.Clone(toLo), notLoopback()...), own...), jump(expr.VerdictJump, self.Name))...)
	}
	for _, own := range proxy {
		b.rule(out, append(own, ret)...)
	}
	b.rule(out, append(toLo, ret)...)
	for _, p := range c.ExcludeOutbound {
		b.rule(out, append(tcpDport(p), ret)...)
	}
	for _, r := range c.ExcludeOutboundRanges {
		if !r.Addr().Is4() {
			return fmt.Errorf("capture: excluded range %s is not IPv4", r)
		}
		b.rule(out, append(daddrIn(r), ret)...)
	}
	b.rule(out, redirectTCP(c.OutboundPort)...)

	pre := b.chain("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	for _, p := range inboundPorts {
		b.rule(pre, append(tcpDport(p), ret)...)
	}
	b.rule(pre, redirectTCP(c.InboundPort)...)

	if err := conn.Flush(); err != nil {
		return fmt.Errorf("apply capture table %s: %w", table.Name, err)
	}
	return nil
}

func tcpDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// InboundSource is the address the inbound proxy's connections to the
// app come from (Istio's choice): capture tells them from the proxy's
// connections to its own pod, which it sends to the inbound port.
var InboundSource = netip.AddrFrom4([4]byte{127, 0, 0, 6})

// saddrIs matches an IPv4 source a.
func saddrIs(a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

// notLoopback matches an IPv4 destination outside 127.0.0.0/8.
func notLoopback() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127}},
	}
}

// daddrIn matches an IPv4 destination inside r.
func daddrIn(r netip.Prefix) []expr.Any {
	mask := net.CIDRMask(r.Bits(), 32)
	addr := r.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

func redirectTCP(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// ifname pads an interface name as the kernel compares it (IFNAMSIZ).
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}
