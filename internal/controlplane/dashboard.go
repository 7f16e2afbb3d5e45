package controlplane

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
	"github.com/trellis-mesh/trellis/internal/servicegraph"
)

// ProxyMetricsPort is where every sidecar serves /stats/prometheus.
const ProxyMetricsPort = 15020

// scrapeTargets are path on the metrics port of every sidecar of
// snapshot s, by pod.
func scrapeTargets(s *catalog.Snapshot, path string) []metricstore.Target {
	if s == nil {
		return nil
	}
	out := make([]metricstore.Target, 0, len(s.Pods))
	for _, p := range s.Pods {
		if !p.Sidecar || !p.IP.IsValid() {
			continue
		}
		out = append(out, metricstore.Target{Key: p.Key(), URL: proxyURL(p.IP, path)})
	}
	return out
}

func proxyURL(ip netip.Addr, path string) string {
	return fmt.Sprintf("http://%s%s", net.JoinHostPort(ip.String(), strconv.Itoa(ProxyMetricsPort)), path)
}

// inventory is what the graph shows even without traffic.
func inventory(s *catalog.Snapshot) servicegraph.Inventory {
	var inv servicegraph.Inventory
	if s == nil {
		return inv
	}
	for _, svc := range s.Services {
		inv.Services = append(inv.Services, servicegraph.Ref{Namespace: svc.Namespace, Name: svc.Name})
	}
	seen := map[string]bool{}
	inv.Pods = make(map[string]string, len(s.Pods))
	for _, p := range s.Pods {
		w := servicegraph.Workload{Namespace: p.Pod.Namespace, Name: proxycfg.WorkloadName(p.Pod), Sidecar: p.Sidecar}
		inv.Pods[p.Key()] = w.Name
		if k := w.Namespace + "/" + w.Name; !seen[k] {
			seen[k] = true
			inv.Workloads = append(inv.Workloads, w)
		}
	}
	return inv
}
