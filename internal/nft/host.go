package nft

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// HostGuard is who may reach the pods on this host, and what the pods may
// reach of it.
type HostGuard struct {
	// Bridge is the pods' bridge: the only interface pod and service
	// addresses are reached through.
	Bridge string
	// Ranges are the pod and service ranges (IPv4).
	Ranges []netip.Prefix
	// Gateway and ControlPort are the one address and TCP port of the host
	// pods may open connections to: the control plane.
	Gateway     netip.Addr
	ControlPort uint16
}

// ApplyHostGuard replaces the ip table named table with rules that keep
// the pods' network to itself, in one transaction:
//
//	input   (priority -5): from the bridge, only established traffic and
//	        new TCP to Gateway:ControlPort; to the ranges from any other
//	        interface but lo, nothing
//	forward (priority -20): to or from the ranges only bridge to bridge
//	output  (priority -5): to the ranges only from sockets of uid 0
//
// Packets the kernel sends without a socket (resets, ICMP errors) pass.
func ApplyHostGuard(table Table, h HostGuard) error {
	if h.Bridge == "" || len(h.Ranges) == 0 || !h.Gateway.Is4() || h.ControlPort == 0 {
		return fmt.Errorf("host guard: bridge, ranges, gateway and control port must be set")
	}
	c, err := table.conn()
	if err != nil {
		return err
	}
	t := replaceTable(c, table.Name, nftables.TableFamilyIPv4)
	b := &builder{c: c, t: t}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	fromBridge := ifaceIs(expr.MetaKeyIIFNAME, h.Bridge, true)
	notFromBridge := ifaceIs(expr.MetaKeyIIFNAME, h.Bridge, false)

	in := b.chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityRef(-5))
	b.rule(in, append(append(fromBridge, established()...), accept)...)
	b.rule(in, append(append(fromBridge,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: h.Gateway.AsSlice()}),
		append(tcpDport(h.ControlPort), accept)...)...)
	b.rule(in, append(fromBridge, drop)...)

	fwd := b.chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(-20))
	b.rule(fwd, append(fromBridge, append(ifaceIs(expr.MetaKeyOIFNAME, h.Bridge, false), drop)...)...)
	out := b.chain("output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityRef(-5))
	for _, p := range h.Ranges {
		if !p.Addr().Is4() {
			return fmt.Errorf("host guard: range %s is not IPv4", p)
		}
		b.rule(in, append(append(inPrefix(16, p), append(notFromBridge, ifaceIs(expr.MetaKeyIIFNAME, "lo", false)...)...), drop)...)
		b.rule(fwd, append(append(inPrefix(16, p), notFromBridge...), drop)...)
		b.rule(fwd, append(append(inPrefix(12, p), notFromBridge...), drop)...)
		b.rule(out, append(inPrefix(16, p),
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			drop)...)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply nftables table %s: %w", table.Name, err)
	}
	return nil
}

// ifaceIs matches the input or output interface's name being (or, with
// is false, not being) name.
func ifaceIs(key expr.MetaKey, name string, is bool) []expr.Any {
	op := expr.CmpOpEq
	if !is {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}
