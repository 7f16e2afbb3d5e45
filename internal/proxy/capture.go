package proxy

import (
	"cmp"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/nft"
)

// CaptureTable is the nftables table that holds a pod's capture rules.
const CaptureTable = "trellis-capture"

// CaptureFlags are the knobs of transparent capture, as Istio's
// traffic.sidecar.istio.io/exclude{Inbound,Outbound}Ports annotations give
// them.
type CaptureFlags struct {
	// ProxyUID is the uid the proxy runs as, as the host's kernel sees it:
	// its sockets are not captured. Default DefaultProxyUID.
	ProxyUID uint32
	// ProxyMark, when not zero, lets sockets with that mark through too,
	// for a proxy that runs as root and marks its sockets (--mark).
	ProxyMark                       uint32
	ExcludeInbound, ExcludeOutbound string // comma-separated ports
	ExcludeOutboundRanges           string // comma-separated IPv4 CIDRs (catalog.ParseIPRanges)
}

// DefaultProxyUID is the uid the proxy runs as unless told otherwise
// (Istio's).
const DefaultProxyUID = 1337

// Register defines the flags on fs.
func (c *CaptureFlags) Register(fs *flag.FlagSet) {
	fs.Func("proxy-uid", "uid the proxy runs as, whose connections are not captured (default 1337)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a non-root uid", v)
		}
		c.ProxyUID = uint32(n)
		return nil
	})
	fs.Func("proxy-mark", "socket mark of the proxy's own connections, also let through (the proxy's --mark)", func(v string) error {
		n, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return fmt.Errorf("%q is not a mark (a 32-bit number)", v)
		}
		c.ProxyMark = uint32(n)
		return nil
	})
	fs.StringVar(&c.ExcludeInbound, "exclude-inbound", "", "comma-separated inbound ports not to capture")
	fs.StringVar(&c.ExcludeOutbound, "exclude-outbound", "", "comma-separated outbound ports not to capture")
	fs.StringVar(&c.ExcludeOutboundRanges, "exclude-outbound-ranges", "", "comma-separated IPv4 CIDRs whose outbound traffic is not captured")
}

// SetUpCapture writes the capture rules into the network namespace netns
// (an open file descriptor; 0 for the caller's own): what the Kubernetes
// init step runs, and what the one-host runtime runs for each injected pod.
func SetUpCapture(netns int, c CaptureFlags) error {
	in, err := ports(c.ExcludeInbound)
	if err != nil {
		return fmt.Errorf("exclude-inbound: %w", err)
	}
	out, err := ports(c.ExcludeOutbound)
	if err != nil {
		return fmt.Errorf("exclude-outbound: %w", err)
	}
	ranges, err := catalog.ParseIPRanges(c.ExcludeOutboundRanges)
	if err != nil {
		return fmt.Errorf("exclude-outbound-ranges: %w", err)
	}
	return nft.ApplyCapture(nft.Table{Name: CaptureTable, NetNS: netns}, nft.Capture{
		OutboundPort: 15001, InboundPort: 15006, ProxyUID: cmp.Or(c.ProxyUID, DefaultProxyUID), ProxyMark: c.ProxyMark,
		ProxyPorts:     []uint16{15000, 15020, 15021},
		ExcludeInbound: in, ExcludeOutbound: out, ExcludeOutboundRanges: ranges,
	})
}

func ports(list string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port number (1-65535)", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}
