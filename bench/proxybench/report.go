package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/h2flood"
)

// checkTools fails early, naming what is missing and how to get it.
func checkTools(o options) error {
	need := map[string]string{"fortio": "go install fortio.org/fortio@v1.66.2", "ghz": "go install github.com/bojand/ghz/cmd/ghz@v0.93.0",
		"taskset": "apt-get install util-linux", "ip": "apt-get install iproute2"}
	if slices.Contains(o.arms, "haproxy") {
		need["haproxy"] = "apt-get install haproxy"
	}
	if slices.Contains(o.arms, "nginx") {
		need["nginx"] = "apt-get install nginx"
	}
	for tool, how := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: %s (bench/run.sh installs everything)", tool, how)
		}
	}
	if slices.ContainsFunc(o.arms, isTrellis) {
		if _, err := os.Stat(o.proxy); err != nil {
			return fmt.Errorf("-proxy %s: %v: build it with go build -o bin/trellis-proxy ./cmd/trellis-proxy", o.proxy, err)
		}
	}
	return nil
}

// report prints the figures as Markdown: one table per worker count, then
// Trellis's ratios to HAProxy against the targets, then the floor arms'.
func report(w io.Writer, o options, results []*result) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "proxybench on %s: %d CPUs (%s), %s, %s; %s per fixed-rate phase\n", host, runtime.NumCPU(), cpuModel(), kernel(),
		runtime.Version(), o.duration)
	fmt.Fprintf(w, "versions: %s; %s; %s; %s\n\n", version("haproxy", "-v"), version("nginx", "-v"), version("fortio", "version"), version("ghz", "--version"))
	for _, workers := range o.workers {
		var rs []*result
		for _, r := range results {
			if r.workers == workers {
				rs = append(rs, r)
			}
		}
		direct := find(rs, "direct")
		fmt.Fprintf(w, "### %d worker(s) per proxy\n\n| | %s |\n|---|%s\n", workers, strings.Join(arms(rs), " | "), strings.Repeat("---|", len(rs)))
		row := func(name string, cell func(r *result) string) {
			cells := make([]string, len(rs))
			for i, r := range rs {
				cells[i] = cell(r)
			}
			fmt.Fprintf(w, "| %s | %s |\n", name, strings.Join(cells, " | "))
		}
		for i, rate := range o.rates {
			h := func(r *result) phase { return r.h1[i] }
			row(fmt.Sprintf("HTTP/1.1 1 kB @%d rps: achieved rps, errors", rate), func(r *result) string { return fmt.Sprintf("%.0f, %d", h(r).rps, h(r).errors) })
			row("  p50 / p99 (ms)", func(r *result) string { return fmt.Sprintf("%s / %s", ms(h(r).p50), ms(h(r).p99)) })
			row("  added p50 / p99 over direct (ms)", func(r *result) string {
				if direct == nil || r.arm == "direct" {
					return "—"
				}
				return fmt.Sprintf("%s / %s", ms(h(r).p50-direct.h1[i].p50), ms(h(r).p99-direct.h1[i].p99))
			})
			row("  CPU µs per request, client / server proxy", func(r *result) string { return cpu(r, h(r)) })
			row("  RSS MiB, client / server proxy", func(r *result) string { return rss(r, h(r)) })
			row("  of it anonymous (not the binary's shared pages), MiB", func(r *result) string { return anonRSS(r, h(r)) })
			row("  GC share of proxy CPU, client / server", func(r *result) string { return gc(h(r)) })
			row("  context switches per request (voluntary+involuntary; threads switching; busiest thread's share), client / server", func(r *result) string { return csw(r, h(r)) })
		}
		row("max HTTP/1.1 throughput (rps, errors)", func(r *result) string { return fmt.Sprintf("%.0f, %d", r.max.rps, r.max.errors) })
		row("  CPU µs per request, client / server proxy", func(r *result) string { return cpu(r, r.max) })
		row("  context switches per request, client / server", func(r *result) string { return csw(r, r.max) })
		// The floor arms serve HTTP/1.1 only: the rest is not theirs.
		fullRow := func(name string, cell func(r *result) string) {
			row(name, func(r *result) string {
				if slices.Contains(floorArms, r.arm) {
					return "—"
				}
				return cell(r)
			})
		}
		fullRow(fmt.Sprintf("HTTP/2 (h2c from the client) @%d rps: p99 ms, errors", otherRate), func(r *result) string { return fmt.Sprintf("%s, %d", ms(r.h2.p99), r.h2.errors) })
		fullRow("  CPU µs per request, client / server proxy", func(r *result) string { return cpu(r, r.h2) })
		fullRow(fmt.Sprintf("gRPC unary @%d rps, 1 connection: p99 ms, errors", otherRate), func(r *result) string { return fmt.Sprintf("%s, %d", ms(r.grpc.p99), r.grpc.errors) })
		fullRow("  CPU µs per request, client / server proxy", func(r *result) string { return cpu(r, r.grpc) })
		fullRow("  calls per replica (max/min)", func(r *result) string {
			if len(r.balance) == 0 {
				return "—"
			}
			return fmt.Sprintf("%v (%.3f)", r.balance, spread(r.balance))
		})
		fullRow(fmt.Sprintf("client proxy RSS per idle connection (KiB, %d held)", o.idle), func(r *result) string {
			if math.IsNaN(r.idleKiB) {
				return "—"
			}
			return fmt.Sprintf("%.1f", r.idleKiB)
		})
		if o.flood > 0 {
			fullRow(fmt.Sprintf("neighbour alone @%d rps: p99 ms, errors", neighbourRate), func(r *result) string {
				if len(r.floods) == 0 {
					return "—"
				}
				return fmt.Sprintf("%s, %d", ms(r.calm.p99), r.calm.errors)
			})
			for i, kind := range h2flood.Kinds {
				fullRow(kind+": neighbour p99 ms (× alone), errors; abusive connections cut/opened; peak RSS MiB", func(r *result) string {
					if len(r.floods) <= i {
						return "—"
					}
					f := r.floods[i]
					refused := ""
					if f.refused > 0 {
						refused = fmt.Sprintf(" (%d refused)", f.refused)
					}
					return fmt.Sprintf("%s (%.1f×), %d; %d/%d%s; %.1f", ms(f.neighbour.p99), float64(f.neighbour.p99)/float64(r.calm.p99),
						f.neighbour.errors, f.cut, f.connections, refused, float64(f.peakRSS)/1024)
				})
			}
		}
		fmt.Fprintln(w)
		ratios(w, o, rs, direct)
		resilientPath(w, o, rs)
		floors(w, o, rs, direct)
	}
}

// ratios prints Trellis against HAProxy for each target of the issue.
func ratios(w io.Writer, o options, rs []*result, direct *result) {
	tr, ha := find(rs, "trellis"), find(rs, "haproxy")
	if tr == nil {
		return
	}
	fmt.Fprintf(w, "| Trellis (%d worker(s)) | figure | target | |\n|---|---|---|---|\n", tr.workers)
	line := func(name string, v float64, target string, ok bool) {
		verdict := "met"
		if !ok {
			verdict = "**missed**"
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			verdict, v = "n/a", math.NaN()
		}
		fmt.Fprintf(w, "| %s | %.2f | %s | %s |\n", name, v, target, verdict)
	}
	// A figure the issue asks for without a target.
	figure := func(name string, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			fmt.Fprintf(w, "| %s | n/a | (figure) | |\n", name)
			return
		}
		fmt.Fprintf(w, "| %s | %.2f | (figure) | |\n", name, v)
	}
	for i, rate := range o.rates {
		if ha != nil {
			c := float64(total(tr.h1[i].cpu)) / float64(total(ha.h1[i].cpu))
			line(fmt.Sprintf("CPU per request @%d rps, pair, × HAProxy", rate), c, "≤ 1.2", c <= 1.2)
			if direct != nil {
				added := func(p func(phase) time.Duration) float64 {
					return addedRatio(p(tr.h1[i]), p(ha.h1[i]), p(direct.h1[i]))
				}
				a := added(func(ph phase) time.Duration { return ph.p99 })
				limit := 1.5
				if rate >= 5000 {
					limit = 2
				}
				line(fmt.Sprintf("added p99 @%d rps × HAProxy", rate), a, fmt.Sprintf("≤ %g", limit), a <= limit)
				figure(fmt.Sprintf("added p50 @%d rps × HAProxy", rate), added(func(ph phase) time.Duration { return ph.p50 }))
			}
		}
		if rate == 1000 {
			larger := func(r *result) float64 { return float64(max(r.h1[i].rss[0], r.h1[i].rss[1])) / 1024 }
			m := larger(tr)
			line("proxy RSS @1000 rps (MiB, the larger)", m, "≤ 20", m <= 20)
			anon := float64(max(tr.h1[i].anon[0], tr.h1[i].anon[1])) / 1024
			figure("of it anonymous (MiB, the larger; the rest is the binary's pages, shared)", anon)
			if ha != nil {
				figure("proxy RSS @1000 rps × HAProxy (the larger of each pair)", m/larger(ha))
				haAnon := float64(max(ha.h1[i].anon[0], ha.h1[i].anon[1])) / 1024
				figure("anonymous RSS @1000 rps × HAProxy (the larger of each pair)", anon/haAnon)
			}
		}
	}
	if ha != nil {
		t := tr.max.rps / ha.max.rps
		line("max throughput × HAProxy", t, "≥ 0.8", t >= 0.8)
		figure("CPU per request at max throughput × HAProxy", float64(total(tr.max.cpu))/float64(total(ha.max.cpu)))
		h2 := float64(total(tr.h2.cpu)) / float64(total(ha.h2.cpu))
		line(fmt.Sprintf("HTTP/2 CPU per request @%d rps × HAProxy", otherRate), h2, "≤ 1.2", h2 <= 1.2)
		g := float64(total(tr.grpc.cpu)) / float64(total(ha.grpc.cpu))
		line(fmt.Sprintf("gRPC CPU per request @%d rps × HAProxy", otherRate), g, "≤ 1.2", g <= 1.2)
		figure("RSS per idle connection × HAProxy", tr.idleKiB/ha.idleKiB)
	}
	line("client proxy RSS per idle connection (KiB)", tr.idleKiB, "≤ 6", tr.idleKiB <= 6)
	b := spread(tr.balance)
	line("gRPC balance over 3 replicas, max/min", b, "≤ 1.1", b <= 1.1)
	if len(tr.floods) > 0 {
		worst, errs := 0.0, int64(0)
		for _, f := range tr.floods {
			worst = max(worst, float64(f.neighbour.p99)/float64(tr.calm.p99))
			errs += f.neighbour.errors
		}
		line("neighbour p99 under the worst flood × alone", worst, "≤ 10", worst <= 10)
		line("neighbour errors under floods", float64(errs), "0", errs == 0)
	}
	fmt.Fprintln(w)
}

// resilientPath prints what the client proxy's resilient path (a route
// with retries and a timeout: net/http's) costs against its engine, arm
// trellis-routed against trellis; the server proxies do the same work in
// both.
func resilientPath(w io.Writer, o options, rs []*result) {
	engine, routed := find(rs, "trellis"), find(rs, "trellis-routed")
	if engine == nil || routed == nil {
		return
	}
	fmt.Fprintf(w, "| resilient path against the engine (%d worker(s)) | trellis-routed × trellis |\n|---|---|\n", engine.workers)
	ratio := func(name string, a, b float64) {
		if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
			fmt.Fprintf(w, "| %s | n/a |\n", name)
			return
		}
		fmt.Fprintf(w, "| %s | %.2f |\n", name, a/b)
	}
	client := func(ph phase) float64 { return float64(ph.cpu[0]) }
	for i, rate := range o.rates {
		ratio(fmt.Sprintf("client proxy CPU per request, HTTP/1.1 @%d rps", rate), client(routed.h1[i]), client(engine.h1[i]))
		ratio(fmt.Sprintf("p99, HTTP/1.1 @%d rps", rate), float64(routed.h1[i].p99), float64(engine.h1[i].p99))
	}
	ratio("max HTTP/1.1 throughput", routed.max.rps, engine.max.rps)
	ratio(fmt.Sprintf("client proxy CPU per request, HTTP/2 @%d rps", otherRate), client(routed.h2), client(engine.h2))
	ratio(fmt.Sprintf("client proxy CPU per request, gRPC @%d rps", otherRate), client(routed.grpc), client(engine.grpc))
	ratio(fmt.Sprintf("p99, gRPC @%d rps", otherRate), float64(routed.grpc.p99), float64(engine.grpc.p99))
	fmt.Fprintln(w)
}

// floors prints each floor arm (and Trellis) against HAProxy on HTTP/1.1:
// what the request path's design can reach at best. The relay's gate is
// the issue's: at least 0.85× HAProxy's maximum and at most 1.1× its CPU
// at 1000 rps, or the targets are revisited with these figures.
func floors(w io.Writer, o options, rs []*result, direct *result) {
	ha := find(rs, "haproxy")
	if ha == nil {
		return
	}
	var shown []*result
	for _, r := range rs {
		if r.arm == "trellis" || slices.Contains(floorArms, r.arm) {
			shown = append(shown, r)
		}
	}
	if len(shown) == 0 {
		return
	}
	fmt.Fprintf(w, "| HTTP/1.1 × HAProxy (%d worker(s)) | max throughput |", ha.workers)
	for _, rate := range o.rates {
		fmt.Fprintf(w, " CPU @%d | added p99 @%d |", rate, rate)
	}
	fmt.Fprintf(w, "\n|---|---|%s\n", strings.Repeat("---|---|", len(o.rates)))
	for _, r := range shown {
		fmt.Fprintf(w, "| %s | %.2f |", r.arm, r.max.rps/ha.max.rps)
		for i := range o.rates {
			added := math.NaN()
			if direct != nil {
				added = addedRatio(r.h1[i].p99, ha.h1[i].p99, direct.h1[i].p99)
			}
			a := "n/a"
			if !math.IsNaN(added) {
				a = fmt.Sprintf("%.2f", added)
			}
			fmt.Fprintf(w, " %.2f | %s |", float64(total(r.h1[i].cpu))/float64(total(ha.h1[i].cpu)), a)
		}
		fmt.Fprintln(w)
	}
	if relay := find(rs, "relay"); relay != nil && len(o.rates) > 0 && o.rates[0] == 1000 {
		t, c := relay.max.rps/ha.max.rps, float64(total(relay.h1[0].cpu))/float64(total(ha.h1[0].cpu))
		verdict := "passed: build the design"
		if t < 0.85 || c > 1.1 {
			verdict = "**not passed**: the figures above say what stands in the way"
		}
		fmt.Fprintf(w, "\nThe relay's gate (max ≥ 0.85×, CPU @1000 ≤ 1.1×): %.2f×, %.2f×, %s.\n", t, c, verdict)
	}
	fmt.Fprintln(w)
}

// addedRatio is the latency an arm adds over direct as a multiple of what
// HAProxy adds; NaN when HAProxy's is within fortio's resolution (50 µs),
// where the ratio would be noise over almost nothing.
func addedRatio(arm, haproxy, direct time.Duration) float64 {
	if haproxy-direct < 50*time.Microsecond {
		return math.NaN()
	}
	return float64(arm-direct) / float64(haproxy-direct)
}

func find(rs []*result, arm string) *result {
	for _, r := range rs {
		if r.arm == arm {
			return r
		}
	}
	return nil
}

func arms(rs []*result) []string {
	var names []string
	for _, r := range rs {
		names = append(names, r.arm)
	}
	return names
}

func total(c [2]time.Duration) time.Duration { return c[0] + c[1] }

func spread(counts []int64) float64 {
	if len(counts) == 0 {
		return math.NaN()
	}
	return float64(slices.Max(counts)) / float64(max(1, slices.Min(counts)))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }

func cpu(r *result, p phase) string {
	if r.arm == "direct" {
		return "—"
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return fmt.Sprintf("%.0f / %.0f", us(p.cpu[0]), us(p.cpu[1]))
}

func csw(r *result, p phase) string {
	if r.arm == "direct" {
		return "—"
	}
	side := func(s switches) string {
		return fmt.Sprintf("%.2f+%.2f; %d; %.0f %%", s.voluntary, s.involuntary, s.threads, 100*s.top)
	}
	return side(p.switches[0]) + " / " + side(p.switches[1])
}

func rss(r *result, p phase) string {
	if r.arm == "direct" {
		return "—"
	}
	return fmt.Sprintf("%.1f / %.1f", float64(p.rss[0])/1024, float64(p.rss[1])/1024)
}

func anonRSS(r *result, p phase) string {
	if r.arm == "direct" {
		return "—"
	}
	return fmt.Sprintf("%.1f / %.1f", float64(p.anon[0])/1024, float64(p.anon[1])/1024)
}

func gc(p phase) string {
	if math.IsNaN(p.gcShare[0]) {
		return "—"
	}
	return fmt.Sprintf("%.0f %% / %.0f %%", 100*p.gcShare[0], 100*p.gcShare[1])
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func kernel() string {
	out, _ := exec.Command("uname", "-r").Output()
	return "Linux " + strings.TrimSpace(string(out))
}

func version(tool string, arg string) string {
	out, _ := exec.Command(tool, arg).CombinedOutput()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if first == "" {
		return tool + " (not found)"
	}
	return first
}
