package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// destinationRules shows the DestinationRules.
func (g *getOptions) destinationRules(ctx context.Context, c meshLister, name string) error {
	all, err := c.DestinationRules(ctx)
	if err != nil {
		return err
	}
	return show(g, filter(all, g, name, func(d localmesh.DestinationRuleStatus) (string, string) { return d.Namespace, d.Name }),
		"destinationrules", printDestinationRules)
}

// printDestinationRules prints what each rule makes its clients' proxies
// do, Istio's defaults filled in, as the proxies get it; -o wide adds the
// Service the host names and the rule's subsets.
func printDestinationRules(w io.Writer, drs []localmesh.DestinationRuleStatus, allNS, wide bool) {
	head := []string{"NAME", "HOST", "LOAD-BALANCER", "CONNECTION-POOL", "OUTLIER-DETECTION", "RETRY-BUDGET", "AGE"}
	if wide {
		head = append(head, "SERVICE", "SUBSETS")
	}
	row(w, withNS(allNS, "NAMESPACE", head)...)
	for _, d := range drs {
		dr := &catalog.DestinationRule{Meta: catalog.Meta{Namespace: d.Namespace, Name: d.Name}, Spec: d.Spec}
		lb, tp := proxycfg.DestinationPolicy(dr)
		cols := []string{d.Name, d.Spec.Host, strings.TrimPrefix(lb.String(), "LOAD_BALANCING_"),
			poolText(tp.GetConnectionPool()), outlierText(tp.GetOutlierDetection()), budgetText(tp.GetRetryBudget()), age(d.Created)}
		if wide {
			svc := "<none>"
			if ns, n, err := catalog.DestinationHost(d.Spec.Host, d.Namespace); err == nil {
				svc = ns + "/" + n
			}
			subsets := make([]string, 0, len(d.Spec.Subsets))
			for _, sub := range d.Spec.Subsets {
				subsets = append(subsets, sub.Name)
			}
			cols = append(cols, svc, cmp.Or(strings.Join(subsets, ","), "<none>"))
		}
		row(w, withNS(allNS, d.Namespace, cols)...)
	}
}

// poolText is "max 100 requests, 10 waiting, 50 TCP connections";
// "no limit" without a limit of requests in flight (past which alone
// requests would wait) or of TCP connections.
func poolText(cp *meshpb.ConnectionPool) string {
	var parts []string
	if cp.GetMaxRequests() > 0 {
		parts = append(parts, plural(cp.GetMaxRequests(), "request"))
		if cp.MaxPending != nil {
			parts = append(parts, fmt.Sprintf("%d waiting", cp.GetMaxPending()))
		}
	}
	if n := cp.GetMaxConnections(); n > 0 {
		parts = append(parts, plural(n, "TCP connection"))
	}
	if len(parts) == 0 {
		return "no limit"
	}
	return "max " + strings.Join(parts, ", ")
}

func plural(n uint32, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// outlierText is "5×5xx, 30s, 10%": the failures in a row that eject,
// the first ejection's time and the most of the endpoints ejected; "off"
// when no failure ejects. Without outlierDetection it is the proxy's
// default ejection.
func outlierText(od *meshpb.OutlierDetection) string {
	if od == nil {
		return "5×5xx, 10s, 100% (default)"
	}
	var parts []string
	if n := od.GetConsecutive_5Xx(); n > 0 {
		parts = append(parts, fmt.Sprintf("%d×5xx", n))
	}
	if n := od.GetConsecutiveGateway(); n > 0 {
		parts = append(parts, fmt.Sprintf("%d×gateway", n))
	}
	if len(parts) == 0 {
		return "off"
	}
	return strings.Join(append(parts, millis(od.GetBaseEjectionMs()), fmt.Sprintf("%d%%", od.GetMaxEjectionPercent())), ", ")
}

// budgetText is "20% + 10/s": the share of requests that may be retried
// and the retries a second always allowed; without retryBudget, the
// proxy's default.
func budgetText(rb *meshpb.RetryBudget) string {
	if rb == nil {
		return fmt.Sprintf("%d%% + %d/s (default)", proxycfg.DefaultRetryPercent, proxycfg.DefaultRetriesASecond)
	}
	return fmt.Sprintf("%s%% + %d/s", strconv.FormatFloat(rb.GetPercent(), 'f', -1, 64), rb.GetMinRetriesPerSecond())
}

// millis writes a duration in its largest whole unit: 30s, 2m, 1h, 500ms.
func millis(ms uint32) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", ms)
}
