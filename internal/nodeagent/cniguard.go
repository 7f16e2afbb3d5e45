package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/nft"
)

// CNIGuard keeps the bridge guard of this node's pods on Kubernetes: each
// pod's link carries only its own MAC and IPv4 address, no IPv4 broadcast
// or multicast, no IPv6 (the policies are IPv4 only) and no other ether
// type, as in one-host mode. It learns the links from the results the CNI
// plugin chain cached for each pod (libcni's cache, which containerd and
// CRI-O keep): the host end of the pod's veth, the pod's MAC and its
// addresses. A pod is guarded from the first read after its network was
// set up (within Interval); links it has not learnt are left alone.
type CNIGuard struct {
	// Dir is libcni's result cache, /var/lib/cni/results.
	Dir string
	// Table is the bridge table's name.
	Table string
	// Interval is how often Dir is read again. Default 500ms.
	Interval time.Duration
}

// DefaultCNIResults is where libcni caches results.
const DefaultCNIResults = "/var/lib/cni/results"

// Run builds the table with the links it reads, then keeps them current
// until ctx ends: it reads Dir every Interval and rewrites the table's sets
// (in one transaction), and rebuilds the table when its chain is gone or
// changed. A directory it cannot read leaves the links as they were. It
// returns the first error of nftables, so the agent stops and shows as
// failing; the kernel keeps the last table it accepted. The table stays
// when Run returns.
func (g *CNIGuard) Run(ctx context.Context) error {
	interval := g.Interval
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	table := nft.Table{Name: g.Table}
	var current []nft.GuardPort
	rules := -1 // the chain's rules as built; -1 before the first build
	for {
		ports, unguarded, err := ReadCNIResults(g.Dir, isBridgePort)
		if err != nil {
			slog.Warn("read the CNI results; the pods' links stay as they were", "dir", g.Dir, "err", err)
			ports = current
		}
		if n, err := nft.GuardRules(table); err != nil || n != rules {
			if rules >= 0 {
				slog.Warn("the pods' guard was changed outside the agent; rebuilding it", "table", g.Table)
			}
			if err := nft.CreateGuard(table, nft.Guard{Scoped: true}, ports); err != nil {
				return err
			}
			if rules, err = nft.GuardRules(table); err != nil {
				return err
			}
		} else if err := nft.SetGuardPorts(table, ports); err != nil { // also undoes edits of the sets
			return err
		}
		if !slices.Equal(portKeys(ports), portKeys(current)) {
			slog.Info("pods' links guarded", "links", len(ports), "unguarded", unguarded)
		}
		current = ports
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func portKeys(ports []nft.GuardPort) []string {
	keys := make([]string, len(ports))
	for i, p := range ports {
		keys[i] = p.Link + " " + p.MAC.String() + " " + p.Addr.String()
	}
	slices.Sort(keys)
	return keys
}

// isBridgePort says whether the host's link name is a port of a bridge.
func isBridgePort(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name, "brport"))
	return err == nil
}

// cniCache is the part of a libcni cache entry the guard reads.
type cniCache struct {
	Kind   string `json:"kind"`
	Result struct {
		Interfaces []struct {
			Name    string `json:"name"`
			MAC     string `json:"mac"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Address   string `json:"address"`
			Interface *int   `json:"interface"`
		} `json:"ips"`
	} `json:"result"`
}

// maxCNIResult bounds one cache file: results are a few KiB.
const maxCNIResult = 1 << 20

// ReadCNIResults reads the links of the pods in libcni's result cache dir:
// for each result, the host-side link that is a bridge port (hostLink
// says which is), the MAC of the pod's interface, its IPv4 address and its
// subnet's broadcast address. Results of networks that make no bridge port
// (loopback) are left out; unguarded counts the results with a bridge port
// that cannot be guarded (no IPv4 address, a malformed file): those pods
// stay unguarded. A missing dir holds no pods; another error is returned.
func ReadCNIResults(dir string, hostLink func(name string) bool) (ports []nft.GuardPort, unguarded int, err error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		p, err := readCNIResult(filepath.Join(dir, e.Name()), hostLink)
		switch {
		case err != nil:
			unguarded++
		case p.Link == "" || seen[p.Link]:
			// no link on a bridge (loopback), or a link already read
		default:
			seen[p.Link] = true
			ports = append(ports, p)
		}
	}
	return ports, unguarded, nil
}

func readCNIResult(path string, hostLink func(string) bool) (nft.GuardPort, error) {
	// Not a FIFO or a device put there meanwhile: never block the loop.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nft.GuardPort{}, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nft.GuardPort{}, fmt.Errorf("%s: not a regular file", path)
	}
	var c cniCache
	if err := json.NewDecoder(&limitedReader{f, maxCNIResult}).Decode(&c); err != nil {
		return nft.GuardPort{}, fmt.Errorf("%s: %w", path, err)
	}
	if c.Kind != "cniCacheV1" {
		return nft.GuardPort{}, fmt.Errorf("%s: kind %q", path, c.Kind)
	}
	var port nft.GuardPort
	for _, ifc := range c.Result.Interfaces {
		if ifc.Sandbox == "" && ifc.Name != "" && len(ifc.Name) <= 15 && !strings.ContainsRune(ifc.Name, '/') && hostLink(ifc.Name) {
			port.Link = ifc.Name
		}
	}
	if port.Link == "" {
		return nft.GuardPort{}, nil
	}
	for _, ip := range c.Result.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(c.Result.Interfaces) {
			continue
		}
		ifc := c.Result.Interfaces[*ip.Interface]
		prefix, err := netip.ParsePrefix(ip.Address)
		if err != nil || ifc.Sandbox == "" || !prefix.Addr().Is4() {
			continue
		}
		mac, err := net.ParseMAC(ifc.MAC)
		if err != nil || len(mac) != 6 {
			continue
		}
		port.Addr, port.MAC = prefix.Addr(), mac
		if prefix.Bits() < 31 {
			last := prefix.Masked().Addr().As4()
			for i := prefix.Bits(); i < 32; i++ {
				last[i/8] |= 0x80 >> (i % 8)
			}
			port.Broadcast = netip.AddrFrom4(last)
		}
		return port, nil
	}
	return nft.GuardPort{}, fmt.Errorf("%s: link %s but no pod interface with an IPv4 address", path, port.Link)
}

// limitedReader fails a read past its limit instead of ending quietly.
type limitedReader struct {
	f interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("more than %d bytes", maxCNIResult)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}
