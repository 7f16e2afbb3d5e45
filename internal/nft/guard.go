package nft

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The guard tables keep pods to their own link and their own address, the
// job Calico's per-workload chains do. Two tables, both in the host's
// network namespace:
//
//	bridge <guard>: every frame a pod's link brings into the bridge
//	    (prerouting, before any other hook) must carry that link's MAC and,
//	    for IPv4 and ARP, that pod's address; VLAN tags, IPv4 broadcast and
//	    multicast, IPv6 and every other ether type are dropped. Each drop
//	    is counted.
//	ip <host>: the pod and service ranges are reached only from the bridge
//	    and by the host's root processes; pods reach the host only on the
//	    control plane's port, and nothing off the host.
//
// Named counters in the bridge table, by what they drop.
const (
	GuardSpoofed   = "spoofed"   // a source MAC or address not the link's own
	GuardBroadcast = "broadcast" // IPv4 broadcast and multicast
	GuardIPv6      = "ipv6"      // IPv6 (pods have none)
	GuardOther     = "other"     // VLAN tags and any other ether type
)

var guardCounters = []string{GuardSpoofed, GuardBroadcast, GuardIPv6, GuardOther}

// Sets of the bridge table: the pods' links, and which MAC and which
// address each link may use.
const (
	guardLinks      = "links"      // ifname
	guardMACs       = "link-macs"  // ifname . ether_addr
	guardAddrs      = "link-addrs" // ifname . ipv4_addr
	guardBroadcasts = "broadcasts" // ipv4_addr: the pods' subnets' broadcast addresses
)

// GuardPort is one pod's link: the host end of its veth, and the MAC and
// address the pod's end owns.
type GuardPort struct {
	Link string
	MAC  net.HardwareAddr
	Addr netip.Addr
	// Broadcast, when valid, is the broadcast address of the pod's
	// subnet, dropped as a destination (a scoped guard knows no range).
	Broadcast netip.Addr
}

// Guard is what the bridge table needs to know of the pods' network.
type Guard struct {
	// Broadcast is the pod range's broadcast address, when the pods
	// share one range (one-host mode).
	Broadcast netip.Addr
	// Scoped guards only the links SetGuardPorts names and leaves frames
	// from any other bridge port alone: on a Kubernetes node, where the
	// CNI plugin makes the links (and other bridges may exist), a pod's
	// link is guarded once the agent has learnt it. Unscoped, a link the
	// guard does not know carries nothing (one-host mode, where the
	// runtime names each link before the pod starts).
	Scoped bool
}

// CreateGuard replaces the bridge table named table with the guard's rules
// and ports, in one transaction (a failure leaves the old table as it
// was). Unscoped, a link SetGuardPorts has not named carries nothing; a
// scoped guard leaves it alone. Counters start at zero.
func CreateGuard(table Table, g Guard, ports []GuardPort) error {
	if !g.Broadcast.Is4() && !(g.Scoped && !g.Broadcast.IsValid()) {
		return fmt.Errorf("guard: broadcast address %s is not IPv4", g.Broadcast)
	}
	c, err := table.conn()
	if err != nil {
		return err
	}
	t := replaceTable(c, table.Name, nftables.TableFamilyBridge)
	for _, name := range guardCounters {
		c.AddObj(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	}
	sets := guardSets(t)
	elems, err := guardElements(ports)
	if err != nil {
		return err
	}
	for i, set := range sets {
		if err := c.AddSet(set, elems[i]); err != nil {
			return fmt.Errorf("guard set %s: %w", set.Name, err)
		}
	}
	b := &builder{c: c, t: t}
	ch := b.chain("prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRef(-200))
	drop := func(counter string) []expr.Any {
		return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter}, &expr.Verdict{Kind: expr.VerdictDrop}}
	}
	if g.Scoped {
		// iifname != @links accept
		b.rule(ch, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: guardLinks, Invert: true},
			&expr.Verdict{Kind: expr.VerdictAccept})
	}
	// A VLAN tag hides the frame from the ip-family hooks (the policies):
	// read the ether type as sent, tag included, and drop tagged frames.
	for _, tag := range []uint16{unix.ETH_P_8021Q, unix.ETH_P_8021AD} {
		b.rule(ch, append([]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(tag)},
		}, drop(GuardOther)...)...)
	}
	// iifname . ether saddr must be the link's own pair (unknown links have none).
	b.rule(ch, concat(guardMACs, payload(expr.PayloadBaseLLHeader, 6, 6), drop(GuardSpoofed))...)
	// ARP: the sender's hardware and protocol addresses are the link's own.
	b.rule(ch, append(etherType(unix.ETH_P_ARP), concat(guardMACs, payload(expr.PayloadBaseNetworkHeader, 8, 6), drop(GuardSpoofed))...)...)
	b.rule(ch, append(etherType(unix.ETH_P_ARP), concat(guardAddrs, payload(expr.PayloadBaseNetworkHeader, 14, 4), drop(GuardSpoofed))...)...)
	b.rule(ch, append(etherType(unix.ETH_P_ARP), &expr.Verdict{Kind: expr.VerdictAccept})...)
	// IPv4: the source address is the pod's; no broadcast, no multicast.
	b.rule(ch, append(etherType(unix.ETH_P_IP), concat(guardAddrs, payload(expr.PayloadBaseNetworkHeader, 12, 4), drop(GuardSpoofed))...)...)
	b.rule(ch, append(append(etherType(unix.ETH_P_IP),
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.PACKET_OTHERHOST}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.PACKET_HOST}}),
		drop(GuardBroadcast)...)...)
	broadcasts := []netip.Prefix{netip.MustParsePrefix("255.255.255.255/32"), netip.MustParsePrefix("224.0.0.0/4")}
	if g.Broadcast.IsValid() {
		broadcasts = append(broadcasts, netip.PrefixFrom(g.Broadcast, 32))
	}
	for _, dst := range broadcasts {
		b.rule(ch, append(append(etherType(unix.ETH_P_IP), inPrefix(16, dst)...), drop(GuardBroadcast)...)...)
	}
	// ip daddr @broadcasts: a subnet's broadcast sent to one pod's MAC.
	b.rule(ch, append(etherType(unix.ETH_P_IP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: guardBroadcasts},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardBroadcast}, &expr.Verdict{Kind: expr.VerdictDrop})...)
	b.rule(ch, append(etherType(unix.ETH_P_IP), &expr.Verdict{Kind: expr.VerdictAccept})...)
	b.rule(ch, append(etherType(unix.ETH_P_IPV6), drop(GuardIPv6)...)...)
	b.rule(ch, drop(GuardOther)...)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply nftables table bridge %s: %w", table.Name, err)
	}
	return nil
}

// SetGuardPorts makes ports the links the bridge table knows, replacing
// the previous list in one transaction.
func SetGuardPorts(table Table, ports []GuardPort) error {
	c, err := table.conn()
	if err != nil {
		return err
	}
	elems, err := guardElements(ports)
	if err != nil {
		return err
	}
	for i, set := range guardSets(&nftables.Table{Name: table.Name, Family: nftables.TableFamilyBridge}) {
		c.FlushSet(set)
		if err := c.SetAddElements(set, elems[i]); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update nftables table bridge %s: %w", table.Name, err)
	}
	return nil
}

// guardElements are the elements of guardSets' sets for ports.
func guardElements(ports []GuardPort) ([4][]nftables.SetElement, error) {
	var out [4][]nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, p := range ports {
		if len(p.MAC) != 6 || !p.Addr.Is4() || len(p.Link) == 0 || len(p.Link) > 15 {
			return out, fmt.Errorf("guard: port %q (MAC %s, address %s): need a link name, an Ethernet MAC and an IPv4 address", p.Link, p.MAC, p.Addr)
		}
		out[0] = append(out[0], nftables.SetElement{Key: ifname(p.Link)})
		out[1] = append(out[1], nftables.SetElement{Key: append(ifname(p.Link), padded(p.MAC)...)})
		out[2] = append(out[2], nftables.SetElement{Key: append(ifname(p.Link), p.Addr.AsSlice()...)})
		if b := p.Broadcast; b.Is4() && !seen[b] {
			seen[b] = true
			out[3] = append(out[3], nftables.SetElement{Key: b.AsSlice()})
		}
	}
	return out, nil
}

// GuardCounts reads the bridge table's drop counters: packets by counter name.
func GuardCounts(table Table) (map[string]uint64, error) {
	c, err := table.conn()
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(&nftables.Table{Name: table.Name, Family: nftables.TableFamilyBridge})
	if err != nil {
		return nil, fmt.Errorf("read nftables counters of bridge %s: %w", table.Name, err)
	}
	return counterPackets(objs), nil
}

// guardSets are the bridge table's sets: links, link-macs, link-addrs and
// broadcasts.
func guardSets(t *nftables.Table) [4]*nftables.Set {
	return [4]*nftables.Set{
		{Table: t, Name: guardLinks, KeyType: nftables.TypeIFName},
		{Table: t, Name: guardMACs, Concatenation: true, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)},
		{Table: t, Name: guardAddrs, Concatenation: true, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)},
		{Table: t, Name: guardBroadcasts, KeyType: nftables.TypeIPAddr},
	}
}

// concat matches "iifname . <field> not in @set", then applies then. The
// field is loaded right after the 16-byte interface name.
func concat(set string, field *expr.Payload, then []expr.Any) []expr.Any {
	field.DestRegister = 12
	return append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 8},
		field,
		&expr.Lookup{SourceRegister: 8, SetName: set, Invert: true},
	}, then...)
}

func payload(base expr.PayloadBase, offset, length uint32) *expr.Payload {
	return &expr.Payload{Base: base, Offset: offset, Len: length}
}

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

// inPrefix matches an IPv4 address at offset of the network header
// (12 source, 16 destination) inside p.
func inPrefix(offset uint32, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// padded pads a concatenated field to whole 4-byte registers.
func padded(b []byte) []byte {
	out := make([]byte, (len(b)+3)/4*4)
	copy(out, b)
	return out
}

func counterPackets(objs []nftables.Obj) map[string]uint64 {
	out := map[string]uint64{}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			out[o.Name] = o.Packets
		case *nftables.NamedObj:
			if ctr, ok := o.Obj.(*expr.Counter); ok {
				out[o.Name] = ctr.Packets
			}
		}
	}
	return out
}

// GuardRules counts the rules of the bridge table's chain, so a keeper can
// tell the table was removed or edited (an error when it is missing).
func GuardRules(table Table) (int, error) {
	c, err := table.conn()
	if err != nil {
		return 0, err
	}
	rules, err := c.GetRules(&nftables.Table{Name: table.Name, Family: nftables.TableFamilyBridge}, &nftables.Chain{Name: "prerouting"})
	if err != nil {
		return 0, fmt.Errorf("read nftables chain bridge %s prerouting: %w", table.Name, err)
	}
	return len(rules), nil
}

// DeleteGuard removes the bridge table named table, if there is one.
func DeleteGuard(table Table) error { return deleteTables(table, nftables.TableFamilyBridge) }
