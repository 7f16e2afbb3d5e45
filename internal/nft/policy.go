package nft

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/netpolicy"
)

// The policy table's layout. Two base chains on the forward hook, egress
// first: an accept in one base chain only ends that chain, so a packet an
// egress rule allowed still meets the destination's ingress rules.
//
//	chain egress  (forward, priority -10): established accept; saddr not
//	    isolated accept; per policy: saddr in its pods -> jump its chain;
//	    per policy: count a denial; drop
//	chain ingress (forward, priority 0): the same on daddr
//	chain <unit>: one rule per allowed (peers, port) pair -> accept
//
// A unit is one policy in one direction. Its chain and sets are named after
// a hash of its compiled content, so an apply leaves unchanged units alone
// and replaces only what changed; the base chains are refilled each time.
// Denial counters are named objects that survive applies.
const (
	egressChain    = "egress"
	ingressChain   = "ingress"
	egressIsolated = "egress-isolated"
	inIsolated     = "ingress-isolated"
	// deniedFlows counts dropped packets per (source, destination)
	// address pair, for the dashboard's denied edges. It keeps its counts
	// across applies; a pair silent for deniedFlowTTL leaves it.
	deniedFlows    = "denied-flows"
	deniedFlowTTL  = 10 * time.Minute
	maxDeniedFlows = 4096
)

// PolicyStats is what ApplyPolicies did, for logs and benchmarks.
type PolicyStats struct {
	Units, UnitsAdded, UnitsRemoved int // policy chains in total, added, removed
	Rules                           int // rules in the table after the apply
}

// unit is one policy direction, compiled for the kernel.
type unit struct {
	name    string // chain name: "in-<ns>-<name>-<hash>"
	counter string // denial counter: "in.<ns>.<name>"
	ingress bool
	policy  netpolicy.Policy
	rules   []netpolicy.Rule
}

func units(rs netpolicy.RuleSet) []unit {
	var out []unit
	for _, p := range rs.Policies {
		for _, dir := range []struct {
			on    bool
			short string
			rules []netpolicy.Rule
		}{{p.Ingress, "in", p.IngressRules}, {p.Egress, "out", p.EgressRules}} {
			if !dir.on || len(p.Pods) == 0 {
				continue
			}
			data, _ := json.Marshal(struct {
				P []netip.Addr
				R []netpolicy.Rule
			}{p.Pods, dir.rules})
			h := fnv.New32a()
			h.Write(data)
			out = append(out, unit{
				name:    fmt.Sprintf("%s-%s-%s-%08x", dir.short, p.Namespace, p.Name, h.Sum32()),
				counter: dir.short + "." + p.Namespace + "." + p.Name,
				ingress: dir.short == "in",
				policy:  p,
				rules:   dir.rules,
			})
		}
	}
	return out
}

// ApplyPolicies makes table enforce rs, in one transaction: packets see the
// old rules or the new ones, never none. Units whose chains already exist
// unchanged are kept; chains listed in dirty are rebuilt even so (the caller
// found them altered). Rules are never removed before their replacement is
// in place, so restarting the caller opens no gap.
func ApplyPolicies(table Table, rs netpolicy.RuleSet, dirty map[string]bool) (PolicyStats, error) {
	c, err := table.conn()
	if err != nil {
		return PolicyStats{}, err
	}
	t := c.AddTable(&nftables.Table{Name: table.Name, Family: nftables.TableFamilyIPv4})
	existing, err := existingState(c, t)
	if err != nil {
		return PolicyStats{}, err
	}
	b := &builder{c: c, t: t}
	egress := b.chain(egressChain, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(-10))
	ingress := b.chain(ingressChain, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	c.FlushChain(egress)
	c.FlushChain(ingress)

	want := units(rs)
	stats := PolicyStats{Units: len(want)}
	keep := map[string]bool{}
	for _, u := range want {
		if existing.chains[u.name] && !dirty[u.name] {
			keep[u.name] = true
		}
	}
	for name := range existing.chains {
		if name == egressChain || name == ingressChain || keep[name] {
			continue
		}
		c.DelChain(&nftables.Chain{Name: name, Table: t})
		stats.UnitsRemoved++
	}
	for _, s := range existing.sets {
		if unitName, _, _ := strings.Cut(s, "."); s != egressIsolated && s != inIsolated && s != deniedFlows && !keep[unitName] {
			c.DelSet(&nftables.Set{Name: s, Table: t})
		}
	}
	isolated := map[bool]map[netip.Addr]bool{true: {}, false: {}}
	counters := map[string]bool{}
	for _, u := range want {
		for _, ip := range u.policy.Pods {
			isolated[u.ingress][ip] = true
		}
		counters[u.counter] = true
		if !keep[u.name] {
			if err := b.unit(u); err != nil {
				return stats, err
			}
			stats.UnitsAdded++
		}
	}
	for name := range counters {
		if !existing.counters[name] {
			c.AddObj(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
		}
	}
	for name := range existing.counters {
		if !counters[name] {
			c.DeleteObject(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter})
		}
	}
	if !slices.Contains(existing.sets, deniedFlows) {
		if err := c.AddSet(deniedFlowSet(t), nil); err != nil {
			return stats, fmt.Errorf("nftables set %s: %w", deniedFlows, err)
		}
	}
	for _, dir := range []struct {
		ingress bool
		chain   *nftables.Chain
		set     string
	}{{false, egress, egressIsolated}, {true, ingress, inIsolated}} {
		if err := b.dispatch(dir.chain, dir.set, dir.ingress, isolated[dir.ingress], want, existing.sets); err != nil {
			return stats, err
		}
	}
	if err := c.Flush(); err != nil {
		return stats, fmt.Errorf("apply nftables table %s: %w", table.Name, err)
	}
	stats.Rules, err = countRules(table)
	return stats, err
}

type tableState struct {
	chains   map[string]bool
	sets     []string
	counters map[string]bool
}

func existingState(c *nftables.Conn, t *nftables.Table) (tableState, error) {
	st := tableState{chains: map[string]bool{}, counters: map[string]bool{}}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, fmt.Errorf("list nftables tables: %w", err)
	}
	found := false
	for _, tt := range tables {
		found = found || tt.Name == t.Name
	}
	if !found {
		return st, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == t.Name {
			st.chains[ch.Name] = true
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return st, fmt.Errorf("list nftables sets: %w", err)
	}
	for _, s := range sets {
		if !s.Anonymous {
			st.sets = append(st.sets, s.Name)
		}
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return st, fmt.Errorf("list nftables objects: %w", err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			st.counters[o.Name] = true
		case *nftables.NamedObj:
			if o.Type == nftables.ObjTypeCounter {
				st.counters[o.Name] = true
			}
		}
	}
	return st, nil
}

// dispatch fills a base chain: established traffic and traffic of pods no
// policy isolates pass; isolated traffic goes through each policy's chain,
// and what none accepted is counted per policy and dropped.
func (b *builder) dispatch(ch *nftables.Chain, isolatedSet string, ingress bool, isolated map[netip.Addr]bool, want []unit, existingSets []string) error {
	for _, s := range existingSets {
		if s == isolatedSet {
			b.c.FlushSet(&nftables.Set{Name: s, Table: b.t})
		}
	}
	set := &nftables.Set{Table: b.t, Name: isolatedSet, KeyType: nftables.TypeIPAddr}
	if err := b.c.AddSet(set, nil); err != nil {
		return err
	}
	var elems []nftables.SetElement
	for ip := range isolated {
		elems = append(elems, nftables.SetElement{Key: ip.AsSlice()})
	}
	sort.Slice(elems, func(i, j int) bool { return string(elems[i].Key) < string(elems[j].Key) })
	if err := b.c.SetAddElements(set, elems); err != nil {
		return err
	}
	b.rule(ch, append(established(), &expr.Verdict{Kind: expr.VerdictAccept})...)
	b.rule(ch, addrIn(set.Name, ingress, true, &expr.Verdict{Kind: expr.VerdictAccept})...)
	var mine []unit
	for _, u := range want {
		if u.ingress == ingress {
			mine = append(mine, u)
		}
	}
	for _, u := range mine {
		b.rule(ch, addrIn(u.name+".pods", ingress, false, &expr.Verdict{Kind: expr.VerdictJump, Chain: u.name})...)
	}
	for _, u := range mine {
		b.rule(ch, addrIn(u.name+".pods", ingress, false, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: u.counter})...)
	}
	// The address pair of what is dropped, counted in the dynamic set.
	b.rule(ch,
		&expr.Payload{DestRegister: 8, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Dynset{SrcRegKey: 8, SetName: deniedFlows, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: deniedFlowTTL,
			Exprs: []expr.Any{&expr.Counter{}}})
	b.rule(ch, &expr.Verdict{Kind: expr.VerdictDrop})
	return nil
}

func deniedFlowSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: deniedFlows, KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr),
		Concatenation: true, Dynamic: true, HasTimeout: true, Timeout: deniedFlowTTL, Size: maxDeniedFlows, Counter: true}
}

// DeniedFlow is traffic no policy allowed, from one address to another.
type DeniedFlow struct {
	Source, Destination netip.Addr
	Packets             uint64
}

// DeniedFlows reads the dropped packets per address pair seen in the last
// 10 minutes (4096 pairs at most).
func DeniedFlows(table Table) ([]DeniedFlow, error) {
	c, err := table.conn()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: table.Name, Family: nftables.TableFamilyIPv4}
	elems, err := c.GetSetElements(&nftables.Set{Table: t, Name: deniedFlows,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr)})
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", deniedFlows, err)
	}
	out := make([]DeniedFlow, 0, len(elems))
	for _, e := range elems {
		if len(e.Key) < 8 {
			continue
		}
		f := DeniedFlow{Source: netip.AddrFrom4([4]byte(e.Key[0:4])), Destination: netip.AddrFrom4([4]byte(e.Key[4:8]))}
		if e.Counter != nil {
			f.Packets = e.Counter.Packets
		}
		out = append(out, f)
	}
	return out, nil
}

// addrIn matches the packet's local-pod address (daddr for ingress, saddr
// for egress) against a named set, then applies then.
func addrIn(set string, ingress, invert bool, then expr.Any) []expr.Any {
	off := uint32(12) // saddr
	if ingress {
		off = 16 // daddr
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set, Invert: invert},
		then,
	}
}

// unit adds one policy direction's sets and chain.
func (b *builder) unit(u unit) error {
	pods := &nftables.Set{Table: b.t, Name: u.name + ".pods", KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	for _, ip := range u.policy.Pods {
		elems = append(elems, nftables.SetElement{Key: ip.AsSlice()})
	}
	if err := b.c.AddSet(pods, elems); err != nil {
		return fmt.Errorf("policy %s: %w", u.name, err)
	}
	ch := b.chain(u.name, "", nil, nil)
	// The remote end: saddr for ingress, daddr for egress.
	remote := uint32(16)
	if u.ingress {
		remote = 12
	}
	for i, r := range u.rules {
		var peer []expr.Any
		if !r.AnyPeer {
			name := fmt.Sprintf("%s.r%d.peers", u.name, i)
			if err := b.rangeSet(name, r.Peers); err != nil {
				return fmt.Errorf("policy %s: %w", u.name, err)
			}
			peer = []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: remote, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: name},
			}
		}
		if r.AnyPort {
			b.rule(ch, append(peer, &expr.Verdict{Kind: expr.VerdictAccept})...)
			continue
		}
		for j, p := range r.Ports {
			match, err := b.portMatch(fmt.Sprintf("%s.r%d.p%d", u.name, i, j), p)
			if err != nil {
				return fmt.Errorf("policy %s: %w", u.name, err)
			}
			b.rule(ch, append(append(append([]expr.Any{}, peer...), match...), &expr.Verdict{Kind: expr.VerdictAccept})...)
		}
	}
	return nil
}

// portMatch matches protocol, destination port range and, for named ports,
// the destination pods the name resolves on.
func (b *builder) portMatch(name string, p netpolicy.Port) ([]expr.Any, error) {
	proto, err := l4proto(string(p.Protocol))
	if err != nil {
		return nil, err
	}
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	if p.From != 0 {
		out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if p.From == p.To {
			out = append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.From)})
		} else {
			out = append(out,
				&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.From)},
				&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.To)})
		}
	}
	if p.Only != nil {
		set := &nftables.Set{Table: b.t, Name: name + ".only", KeyType: nftables.TypeIPAddr}
		var elems []nftables.SetElement
		for _, ip := range p.Only {
			elems = append(elems, nftables.SetElement{Key: ip.AsSlice()})
		}
		if err := b.c.AddSet(set, elems); err != nil {
			return nil, err
		}
		out = append(out,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name})
	}
	return out, nil
}

// rangeSet adds an interval set holding ranges (sorted, disjoint).
func (b *builder) rangeSet(name string, ranges []netpolicy.Range) error {
	set := &nftables.Set{Table: b.t, Name: name, KeyType: nftables.TypeIPAddr, Interval: true}
	var elems []nftables.SetElement
	for _, r := range ranges {
		elems = append(elems, nftables.SetElement{Key: r.From.AsSlice()})
		if end := r.To.Next(); end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return b.c.AddSet(set, elems)
}

// countRules returns the number of rules in the table's chains.
func countRules(table Table) (int, error) {
	counts, err := RuleCounts(table)
	total := 0
	for _, n := range counts {
		total += n
	}
	return total, err
}

// RuleCounts returns the number of rules in each chain of table: what a
// caller compares with what it applied to notice hand edits.
func RuleCounts(table Table) (map[string]int, error) {
	c, err := table.conn()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: table.Name, Family: nftables.TableFamilyIPv4}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	out := map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != table.Name {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		out[ch.Name] = len(rules)
	}
	return out, nil
}

// ExpectedRuleCounts returns how many rules ApplyPolicies puts in each
// chain for rs.
func ExpectedRuleCounts(rs netpolicy.RuleSet) map[string]int {
	out := map[string]int{egressChain: 4, ingressChain: 4} // established, not isolated, denied flow, drop
	for _, u := range units(rs) {
		base := egressChain
		if u.ingress {
			base = ingressChain
		}
		out[base] += 2
		n := 0
		for _, r := range u.rules {
			if r.AnyPort {
				n++
			} else {
				n += len(r.Ports)
			}
		}
		out[u.name] = n
	}
	return out
}

// DeniedCounts returns the denial counters: packets per "in.<ns>.<name>" or
// "out.<ns>.<name>".
func DeniedCounts(table Table) (map[string]uint64, error) {
	c, err := table.conn()
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(&nftables.Table{Name: table.Name, Family: nftables.TableFamilyIPv4})
	if err != nil {
		return nil, fmt.Errorf("read nftables counters: %w", err)
	}
	return counterPackets(objs), nil
}

// FlushChain removes every rule of one chain of table. Operators use it to
// drop a chain by hand; the node agent notices and restores it.
func FlushChain(table Table, chain string) error {
	c, err := table.conn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: table.Name, Family: nftables.TableFamilyIPv4}
	c.FlushChain(&nftables.Chain{Name: chain, Table: t})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("flush chain %s of table %s: %w", chain, table.Name, err)
	}
	return nil
}
