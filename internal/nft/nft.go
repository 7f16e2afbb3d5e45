// Package nft is the only importer of github.com/google/nftables: it renders
// Trellis's rule sets into nftables tables of our own and applies them
// atomically, in one netlink transaction, without the nft or iptables
// binaries.
//
// Today it renders the one-host runtime's service table (the kube-proxy
// role: service VIP:port DNATed to a random ready endpoint). Callers are the
// one-host runtime (internal/localmesh); later the node agent.
package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// MasqueradeMark is the packet mark that asks the service table's
// postrouting chain to masquerade a connection: set for hairpin traffic (a
// pod reaching itself through a service VIP), whose reply would otherwise
// come back with the pod's own address as source.
const MasqueradeMark = 0x4000

// Endpoint is one backend of a service port.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
}

// ServicePort is one VIP:port and the endpoints it balances across.
type ServicePort struct {
	Name      string // "namespace/name:port", used to name chains
	VIP       netip.Addr
	Port      uint16
	Protocol  string // "TCP", "UDP" or "SCTP"
	Endpoints []Endpoint
}

// Table names one of our ip-family tables and the network namespace that
// holds it.
type Table struct {
	Name string
	// NetNS is an open file descriptor of the network namespace; 0 means the
	// caller's own.
	NetNS int
}

func (t Table) conn() (*nftables.Conn, error) {
	// A whole policy table is one batch, megabytes at scale: raise the
	// socket buffers past the sysctl defaults (we run as root).
	opts := []nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}
	if t.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(t.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// ApplyServices replaces table (family ip) with one that DNATs each service
// port to a uniformly random endpoint, rejects connections to ports without
// endpoints, and masquerades hairpin connections. The replacement is one
// transaction: packets see the old rules or the new ones, never a mix or none.
func ApplyServices(table Table, ports []ServicePort) error {
	c, err := table.conn()
	if err != nil {
		return err
	}
	t := replaceTable(c, table.Name, nftables.TableFamilyIPv4)
	b := &builder{c: c, t: t}
	if err := b.services(ports); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply nftables table %s: %w", table.Name, err)
	}
	return nil
}

// replaceTable queues, on c, the removal of table name (if it exists) and
// the creation of an empty one, for a transaction that rebuilds it whole.
func replaceTable(c *nftables.Conn, name string, family nftables.TableFamily) *nftables.Table {
	t := &nftables.Table{Name: name, Family: family}
	c.AddTable(t) // create if missing, so the delete below never fails
	c.DelTable(t)
	c.AddTable(t)
	return t
}

// DeleteTable removes the table of that name in the ip and bridge
// families; a missing table is fine.
func DeleteTable(table Table) error {
	return deleteTables(table, nftables.TableFamilyIPv4, nftables.TableFamilyBridge)
}

// deleteTables removes the tables named table in families, if there are.
func deleteTables(table Table, families ...nftables.TableFamily) error {
	c, err := table.conn()
	if err != nil {
		return err
	}
	for _, family := range families {
		tables, err := c.ListTablesOfFamily(family)
		if err != nil {
			return fmt.Errorf("list nftables tables: %w", err)
		}
		for _, t := range tables {
			if t.Name == table.Name {
				c.DelTable(t)
				if err := c.Flush(); err != nil {
					return fmt.Errorf("delete nftables table %s: %w", table.Name, err)
				}
			}
		}
	}
	return nil
}

// Tables lists the names of ip-family tables in the network namespace netns
// (0: the caller's) whose names start with prefix.
func Tables(netns int, prefix string) ([]string, error) {
	c, err := Table{NetNS: netns}.conn()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var out []string
	for _, t := range tables {
		if strings.HasPrefix(t.Name, prefix) {
			out = append(out, t.Name)
		}
	}
	return out, nil
}

func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 64<<20); e != nil {
				serr = e
			}
		}
	})
	return errors.Join(err, serr)
}

type builder struct {
	c *nftables.Conn
	t *nftables.Table
}

func (b *builder) chain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	ch := &nftables.Chain{Name: name, Table: b.t}
	if hook != nil {
		ch.Type, ch.Hooknum, ch.Priority = typ, hook, prio
		accept := nftables.ChainPolicyAccept
		ch.Policy = &accept
	}
	return b.c.AddChain(ch)
}

func (b *builder) rule(ch *nftables.Chain, exprs ...expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: b.t, Chain: ch, Exprs: exprs})
}

func (b *builder) services(ports []ServicePort) error {
	dispatch := b.chain("services", "", nil, nil)
	for _, h := range []*nftables.ChainHook{nftables.ChainHookPrerouting, nftables.ChainHookOutput} {
		name := "nat-prerouting"
		if h == nftables.ChainHookOutput {
			name = "nat-output"
		}
		b.rule(b.chain(name, nftables.ChainTypeNAT, h, nftables.ChainPriorityNATDest), jump(expr.VerdictJump, dispatch.Name))
	}
	post := b.chain("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	b.rule(post,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MasqueradeMark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Masq{})
	// Ports without endpoints are refused at once, as kube-proxy does, rather
	// than left to time out.
	var rejectChains []*nftables.Chain
	for _, h := range []*nftables.ChainHook{nftables.ChainHookForward, nftables.ChainHookOutput} {
		name := "filter-forward"
		if h == nftables.ChainHookOutput {
			name = "filter-output"
		}
		rejectChains = append(rejectChains, b.chain(name, nftables.ChainTypeFilter, h, nftables.ChainPriorityFilter))
	}
	for i, sp := range ports {
		proto, err := l4proto(sp.Protocol)
		if err != nil {
			return fmt.Errorf("service %s: %w", sp.Name, err)
		}
		match := matchVIP(sp.VIP, proto, sp.Port)
		if len(sp.Endpoints) == 0 {
			for _, ch := range rejectChains {
				b.rule(ch, append(match, reject(proto))...)
			}
			continue
		}
		svcChain := b.chain(chainName("svc", i, sp.Name), "", nil, nil)
		b.rule(dispatch, append(match, jump(expr.VerdictGoto, svcChain.Name))...)
		if err := b.endpoints(svcChain, i, sp); err != nil {
			return err
		}
	}
	return nil
}

// endpoints fills a service chain with a random pick among per-endpoint
// chains: numgen random mod N vmap { 0: goto ep0, 1: goto ep1, ... }.
func (b *builder) endpoints(svcChain *nftables.Chain, i int, sp ServicePort) error {
	vmap := &nftables.Set{Table: b.t, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	var elems []nftables.SetElement
	for j, ep := range sp.Endpoints {
		if !ep.Addr.Is4() {
			return fmt.Errorf("service %s: endpoint %s is not IPv4", sp.Name, ep.Addr)
		}
		epChain := b.chain(fmt.Sprintf("%s-ep%d", chainName("svc", i, sp.Name), j), "", nil, nil)
		addr := ep.Addr.AsSlice()
		b.rule(epChain,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^uint32(MasqueradeMark)),
				Xor:  binaryutil.NativeEndian.PutUint32(MasqueradeMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
		b.rule(epChain,
			&expr.Immediate{Register: 1, Data: addr},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ep.Port)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
				RegAddrMin: 1, RegProtoMin: 2, Specified: true})
		elems = append(elems, nftables.SetElement{
			Key:         binaryutil.NativeEndian.PutUint32(uint32(j)),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: epChain.Name},
		})
	}
	if err := b.c.AddSet(vmap, elems); err != nil {
		return fmt.Errorf("service %s: endpoint map: %w", sp.Name, err)
	}
	b.rule(svcChain,
		&expr.Numgen{Register: 1, Modulus: uint32(len(sp.Endpoints)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: vmap.Name, SetID: vmap.ID})
	return nil
}

// matchVIP matches "ip daddr VIP meta l4proto P th dport PORT".
func matchVIP(vip netip.Addr, proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vip.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func reject(proto byte) expr.Any {
	if proto == unix.IPPROTO_TCP {
		return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
	}
	return &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3} // port unreachable
}

func jump(kind expr.VerdictKind, chain string) expr.Any {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

func l4proto(p string) (byte, error) {
	switch p {
	case "TCP", "":
		return unix.IPPROTO_TCP, nil
	case "UDP":
		return unix.IPPROTO_UDP, nil
	case "SCTP":
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: use TCP, UDP or SCTP", p)
}

// chainName makes a readable, unique chain name: "svc3-web/hello:8080".
func chainName(kind string, i int, name string) string {
	return fmt.Sprintf("%s%d-%s", kind, i, name)
}
