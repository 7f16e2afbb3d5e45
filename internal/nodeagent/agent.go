// Package nodeagent is the node agent (trellis-node): it keeps the kernel's
// nftables policy table in step with the mesh's NetworkPolicies. It reads
// mesh state from a Source, compiles it with internal/netpolicy, applies it
// with internal/nft, re-checks the kernel every Resync so hand-deleted rules
// come back, and exports denial counters as Prometheus metrics.
//
// The kernel keeps enforcing the last applied rules while the agent is down;
// a starting agent replaces them atomically, so restarts open no gap.
// Imported by cmd/trellis-node and by the CLI's hidden `trellis node-agent`,
// which the one-host runtime runs.
package nodeagent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-mesh/trellis/internal/netpolicy"
	"github.com/trellis-mesh/trellis/internal/nft"
	"github.com/trellis-mesh/trellis/internal/safehttp"
)

// Snapshot is one version of the mesh state the agent enforces.
type Snapshot struct {
	Version uint64          `json:"version"`
	Input   netpolicy.Input `json:"input"`
}

// Source supplies snapshots. Next returns the first snapshot newer than
// version, waiting up to wait for one; when none came it returns the current
// one (same version). It is called from the agent's goroutine only.
type Source interface {
	Next(ctx context.Context, version uint64, wait time.Duration) (Snapshot, error)
}

// Config configures an Agent.
type Config struct {
	// Source is where mesh state comes from. Required.
	Source Source
	// Table is the nftables table (family ip) the agent owns.
	// Default "trellis-netpol".
	Table string
	// Resync is how often the kernel is checked against what was applied.
	// Default 500 ms, so a hand-deleted rule is back well within 2 s.
	Resync time.Duration
	// MetricsAddr is where /metrics is served; empty serves nothing.
	MetricsAddr string
	// GuardTable, when set, is the bridge table guarding the pods' links
	// (kept by the runtime), whose drop counters /metrics shows.
	GuardTable string
}

// Agent enforces NetworkPolicies. Create with New, then Run.
type Agent struct {
	cfg     Config
	applied prometheus.Histogram
	rules   prometheus.Gauge

	pods  atomic.Pointer[map[netip.Addr]string] // "namespace/name" by address, for denied-flow labels
	ready atomic.Bool                           // the policies were applied once

	// Owned by Run's goroutine.
	version  uint64
	ruleset  netpolicy.RuleSet
	expected map[string]int
	applies  int
}

// RegisterFlags defines the agent's flags on fs (Source is not one).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Table, "table", "trellis-netpol", "nftables table (family ip) the agent owns")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:15090", "address for /metrics; empty disables")
	fs.DurationVar(&c.Resync, "resync", 500*time.Millisecond, "how often the kernel is checked against the applied rules")
	fs.StringVar(&c.GuardTable, "guard-table", "", "bridge table guarding the pods' links, whose drop counters /metrics shows (trellis up sets it)")
}

// New checks cfg and returns an agent that has not touched the kernel.
func New(cfg Config) (*Agent, error) {
	if cfg.Source == nil {
		return nil, errors.New("node agent: no source of mesh state")
	}
	if cfg.Table == "" {
		cfg.Table = "trellis-netpol"
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 500 * time.Millisecond
	}
	return &Agent{
		cfg: cfg,
		applied: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "trellis_netpol_apply_seconds",
			Help:    "Time to compile and apply the policy table to the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_netpol_rules", Help: "Rules in the policy table after the last apply.",
		}),
	}, nil
}

// Run enforces policies until ctx is done. It returns nil then; the rules
// stay in the kernel.
func (a *Agent) Run(ctx context.Context) error {
	if a.cfg.MetricsAddr != "" {
		srv, err := a.serveMetrics()
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		snap, err := a.cfg.Source.Next(ctx, a.version, a.cfg.Resync)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			slog.Warn("mesh state unavailable; keeping the rules in force", "err", err, "retry", backoff)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if err := a.sync(snap); err != nil {
			slog.Error("apply network policies", "err", err)
			sleep(ctx, time.Second)
		}
	}
	return nil
}

// sync applies snap when it is new, or repairs chains the kernel lost or
// someone edited.
func (a *Agent) sync(snap Snapshot) error {
	var dirty map[string]bool
	if snap.Version == a.version && a.applies > 0 {
		var err error
		if dirty, err = a.drift(); err != nil || len(dirty) == 0 {
			return err
		}
		slog.Warn("policy table was changed outside the agent; restoring it", "chains", len(dirty))
	}
	start := time.Now()
	rs := netpolicy.Compile(snap.Input)
	table := nft.Table{Name: a.cfg.Table}
	stats, err := nft.ApplyPolicies(table, rs, dirty)
	if err != nil {
		return err
	}
	a.applied.Observe(time.Since(start).Seconds())
	a.rules.Set(float64(stats.Rules))
	if a.applies == 0 || !reflect.DeepEqual(rs, a.ruleset) {
		slog.Info("network policies applied", "version", snap.Version, "policies", len(rs.Policies),
			"chainsAdded", stats.UnitsAdded, "chainsRemoved", stats.UnitsRemoved, "rules", stats.Rules,
			"took", time.Since(start).Round(time.Microsecond))
	}
	pods := make(map[netip.Addr]string, len(snap.Input.Pods))
	for _, p := range snap.Input.Pods {
		pods[p.IP] = p.Namespace + "/" + p.Name
	}
	a.pods.Store(&pods)
	a.version, a.ruleset, a.expected = snap.Version, rs, nft.ExpectedRuleCounts(rs)
	a.applies++
	a.ready.Store(true)
	return nil
}

// drift returns the chains whose rule count differs from what was applied.
func (a *Agent) drift() (map[string]bool, error) {
	got, err := nft.RuleCounts(nft.Table{Name: a.cfg.Table})
	if err != nil {
		return nil, err
	}
	dirty := map[string]bool{}
	for ch, n := range a.expected {
		if got[ch] != n {
			dirty[ch] = true
		}
	}
	for ch := range got {
		if _, ok := a.expected[ch]; !ok {
			dirty[ch] = true
		}
	}
	return dirty, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// deniedCollector reads the kernel's denial counters at scrape time.
type deniedCollector struct {
	table string
	desc  *prometheus.Desc
}

func (c deniedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c deniedCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := nft.DeniedCounts(nft.Table{Name: c.table})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for name, packets := range counts {
		dir, ns, policy, ok := ParseCounterName(name)
		if !ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(packets), ns, policy, dir)
	}
}

// guardCollector reads the bridge guard's drop counters at scrape time.
type guardCollector struct {
	table string
	desc  *prometheus.Desc
}

func (c guardCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c guardCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := nft.GuardCounts(nft.Table{Name: c.table})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for reason, packets := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(packets), reason)
	}
}

// flowCollector reads the kernel's per-address-pair denial counts at
// scrape time and names the pods at either end.
type flowCollector struct {
	table string
	pods  *atomic.Pointer[map[netip.Addr]string]
	desc  *prometheus.Desc
}

func (c flowCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c flowCollector) Collect(ch chan<- prometheus.Metric) {
	flows, err := nft.DeniedFlows(nft.Table{Name: c.table})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	var pods map[netip.Addr]string
	if p := c.pods.Load(); p != nil {
		pods = *p
	}
	name := func(ip netip.Addr) (string, string) {
		if ns, pod, ok := strings.Cut(pods[ip], "/"); ok {
			return ns, pod
		}
		return "unknown", "unknown"
	}
	sums := map[[4]string]uint64{} // two addresses may map to one unknown pair
	for _, f := range flows {
		sns, spod := name(f.Source)
		dns, dpod := name(f.Destination)
		sums[[4]string{sns, spod, dns, dpod}] += f.Packets
	}
	for k, n := range sums {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), k[0], k[1], k[2], k[3])
	}
}

// ParseCounterName splits a denial counter name "in.<ns>.<policy>" or
// "out.<ns>.<policy>" into direction ("ingress" or "egress"), namespace and
// policy. Namespaces hold no dots, so the first two dots split it.
func ParseCounterName(name string) (dir, ns, policy string, ok bool) {
	short, rest, ok1 := strings.Cut(name, ".")
	ns, policy, ok2 := strings.Cut(rest, ".")
	switch {
	case !ok1 || !ok2:
		return "", "", "", false
	case short == "in":
		return "ingress", ns, policy, true
	case short == "out":
		return "egress", ns, policy, true
	}
	return "", "", "", false
}

func (a *Agent) serveMetrics() (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.applied, a.rules, deniedCollector{
		table: a.cfg.Table,
		desc: prometheus.NewDesc("trellis_netpol_denied_packets_total",
			"Packets dropped because no NetworkPolicy allowed them, per isolating policy and direction.",
			[]string{"namespace", "policy", "direction"}, nil),
	}, flowCollector{
		table: a.cfg.Table, pods: &a.pods,
		desc: prometheus.NewDesc("trellis_netpol_denied_flow_packets_total",
			"Packets dropped because no NetworkPolicy allowed them, per source and destination pod (\"unknown\" for other addresses) seen in the last 10 minutes.",
			[]string{"source_namespace", "source_pod", "destination_namespace", "destination_pod"}, nil),
	})
	if a.cfg.GuardTable != "" {
		reg.MustRegister(guardCollector{table: a.cfg.GuardTable,
			desc: prometheus.NewDesc("trellis_guard_dropped_packets_total",
				"Packets the pods' links may not carry, dropped whatever the policies say, by reason: "+
					"spoofed (a source MAC or address not the link's own), broadcast (IPv4 broadcast and multicast), ipv6, other.",
				[]string{"reason"}, nil)})
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Ready once the mesh's policies are in the kernel: the DaemonSet's
	// readiness probe, which `trellis install` and `trellis check` wait for.
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "network policies not applied yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := safehttp.Server(mux)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics server", "err", err)
		}
	}()
	return srv, nil
}
