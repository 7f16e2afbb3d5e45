package netpolicy

import (
	"net/netip"
	"sort"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

func (r Range) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// prefixRange returns the first and last address of p.
func prefixRange(p netip.Prefix) Range {
	p = p.Masked()
	from := p.Addr()
	b := from.As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	to := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return Range{from, to}
}

// blockRanges returns an ipBlock's CIDR minus its exceptions.
func blockRanges(b catalog.IPBlock) []Range {
	ranges := []Range{prefixRange(b.CIDR)}
	for _, ex := range b.Except {
		ranges = subtract(ranges, prefixRange(ex))
	}
	return ranges
}

// subtract removes cut from every range.
func subtract(ranges []Range, cut Range) []Range {
	var out []Range
	for _, r := range ranges {
		if cut.To.Less(r.From) || r.To.Less(cut.From) {
			out = append(out, r) // disjoint
			continue
		}
		if r.From.Less(cut.From) {
			out = append(out, Range{r.From, cut.From.Prev()})
		}
		if cut.To.Less(r.To) {
			out = append(out, Range{cut.To.Next(), r.To})
		}
	}
	return out
}

// mergeRanges sorts ranges and joins overlapping and adjacent ones, so the
// result can fill an nftables interval set.
func mergeRanges(ranges []Range) []Range {
	if len(ranges) == 0 {
		return nil
	}
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].From.Less(ranges[j].From) })
	out := []Range{ranges[0]}
	for _, r := range ranges[1:] {
		last := &out[len(out)-1]
		next := last.To.Next()
		if !next.IsValid() || !next.Less(r.From) { // overlaps or touches
			if last.To.Less(r.To) {
				last.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

func inRanges(ranges []Range, ip netip.Addr) bool {
	for _, r := range ranges {
		if !ip.Less(r.From) && !r.To.Less(ip) {
			return true
		}
	}
	return false
}
