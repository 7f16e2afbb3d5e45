package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/h2flood"
)

// result is everything measured for one arm at one worker count.
type result struct {
	arm     string
	workers int
	h1      []phase // one per rate
	max     phase   // HTTP/1.1 at no set rate
	h2      phase   // HTTP/2 (h2c from the client) at 1000 rps
	grpc    phase   // unary gRPC at 1000 rps, one client connection
	balance []int64 // gRPC calls per replica (nil when not balanced)
	idleKiB float64 // client proxy RSS per idle keep-alive connection; NaN without a proxy
	calm    phase   // the well-behaved neighbour alone, before the floods
	floods  []flood // one per h2flood kind; none without a proxy
}

// flood is the client proxy under one HTTP/2 flood, with the well-behaved
// neighbour beside it.
type flood struct {
	kind        string
	neighbour   phase
	connections int   // abusive connections opened (each floods until cut off)
	cut         int   // of which the proxy ended with a GOAWAY
	refused     int   // connections the proxy did not accept
	peakRSS     int64 // KiB, the client proxy's, sampled every 100 ms
}

// phase is one load run: what the load generator saw and what it cost
// each proxy (index 0 the client side, 1 the server side).
type phase struct {
	rate     int // requested; 0 means as fast as possible
	requests int64
	errors   int64
	rps      float64
	p50, p99 time.Duration
	cpu      [2]time.Duration // per request
	rss      [2]int64         // KiB, at the end
	anon     [2]int64         // KiB of rss that is anonymous
	gcShare  [2]float64       // of the proxy's CPU; NaN when unknown
	switches [2]switches
}

// switches are a proxy's context switches during a phase.
type switches struct {
	voluntary, involuntary float64 // per request
	threads                int     // threads that switched at all
	top                    float64 // the busiest thread's share
}

// switchesOver is what happened between two samples of a proxy's threads.
func switchesOver(before, after map[int][2]int64, requests int64) switches {
	var s switches
	var total, top int64
	for tid, a := range after {
		b := before[tid]
		v, i := a[0]-b[0], a[1]-b[1]
		if v+i == 0 {
			continue
		}
		s.threads++
		s.voluntary += float64(v)
		s.involuntary += float64(i)
		total += v + i
		top = max(top, v+i)
	}
	s.voluntary /= float64(requests)
	s.involuntary /= float64(requests)
	if total > 0 {
		s.top = float64(top) / float64(total)
	}
	return s
}

// The load generators' shape: connections for fixed rates and for the
// maximum, gRPC workers on one connection, and the HTTP/2 and gRPC rate.
const (
	conns       = 16
	maxConns    = 32
	grpcWorkers = 16
	otherRate   = 1000
)

func measure(ctx context.Context, o options, arm string, workers int) (*result, error) {
	t, err := newTopo(workers)
	if err != nil {
		return nil, err
	}
	if os.Getenv("PROXYBENCH_KEEP") == "" {
		defer t.close()
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	backend, err := t.start("backend", serverNS, t.cpus(false), nil, self, "backend")
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, serverNS, "http://127.0.0.1:8080/", backend); err != nil {
		return nil, err
	}
	tg, px, err := setUp(ctx, o, arm, t)
	if err != nil {
		return nil, err
	}
	r := &result{arm: arm, workers: workers, idleKiB: math.NaN()}
	// Warm up: pools, TLS sessions, the balancer's estimates.
	if _, err := fortio(ctx, t, tg.http, otherRate, conns, 2*time.Second, false); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	short := o.duration * 2 / 3
	for _, rate := range o.rates {
		ph, err := t.phase(ctx, px, func() (phase, error) { return fortio(ctx, t, tg.http, rate, conns, o.duration, false) })
		if err != nil {
			return nil, fmt.Errorf("HTTP/1.1 at %d rps: %w", rate, err)
		}
		r.h1 = append(r.h1, ph)
	}
	if r.max, err = t.phase(ctx, px, func() (phase, error) { return fortio(ctx, t, tg.http, 0, maxConns, short, false) }); err != nil {
		return nil, fmt.Errorf("maximum throughput: %w", err)
	}
	if tg.floor { // HTTP/1.1 only; nothing else checks their answers
		for _, ph := range append(r.h1, r.max) {
			if ph.errors > 0 {
				return nil, fmt.Errorf("%d of %d requests failed (rate %d)", ph.errors, ph.requests, ph.rate)
			}
		}
		return r, nil
	}
	if r.h2, err = t.phase(ctx, px, func() (phase, error) { return fortio(ctx, t, tg.h2, otherRate, conns, short, true) }); err != nil {
		return nil, fmt.Errorf("HTTP/2: %w", err)
	}
	before, err := counts(ctx)
	if err != nil {
		return nil, err
	}
	if r.grpc, err = t.phase(ctx, px, func() (phase, error) { return ghz(ctx, t, tg.grpc, otherRate, short) }); err != nil {
		return nil, fmt.Errorf("gRPC: %w", err)
	}
	after, err := counts(ctx)
	if err != nil {
		return nil, err
	}
	if tg.balanced {
		for i := range after {
			r.balance = append(r.balance, after[i]-before[i])
		}
	}
	if px.client != nil {
		if r.idleKiB, err = idlePerConn(ctx, t, px.client, tg.http, o.idle); err != nil {
			return nil, fmt.Errorf("idle connections: %w", err)
		}
		if o.flood > 0 {
			if err := floods(ctx, t, o, tg, px, r); err != nil {
				return nil, fmt.Errorf("floods: %w", err)
			}
		}
	}
	return r, nil
}

// neighbourRate is the well-behaved client's rate beside the floods.
const neighbourRate = 100

// floods measures the neighbour alone, then beside each flood on the
// client proxy's HTTP/2 listener.
func floods(ctx context.Context, t *topo, o options, tg targets, px proxies, r *result) error {
	var err error
	if r.calm, err = fortio(ctx, t, tg.http, neighbourRate, 2, o.flood, false); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, kind := range h2flood.Kinds {
		f := flood{kind: kind}
		stop := make(chan struct{})
		sampled := make(chan int64)
		go func() {
			var peak int64
			for tick := time.NewTicker(100 * time.Millisecond); ; {
				select {
				case <-tick.C:
					peak = max(peak, treeUsage(px.client.cmd.Process.Pid).rss)
					continue
				case <-stop:
					tick.Stop()
				}
				sampled <- peak
				return
			}
		}()
		type attack struct {
			out []byte
			err error
		}
		attacked := make(chan attack, 1)
		go func() {
			out, err := run(ctx, clientNS, t.cpus(false), self, "flood", kind, tg.h2, o.flood.String())
			attacked <- attack{out, err}
		}()
		f.neighbour, err = fortio(ctx, t, tg.http, neighbourRate, 2, o.flood, false)
		a := <-attacked
		close(stop)
		f.peakRSS = <-sampled
		if err != nil {
			return err
		}
		if a.err != nil {
			return a.err
		}
		var counts struct{ Connections, Cut, Refused int }
		if err := json.Unmarshal(a.out, &counts); err != nil {
			return fmt.Errorf("the flood helper's output %q: %w", a.out, err)
		}
		f.connections, f.cut, f.refused = counts.Connections, counts.Cut, counts.Refused
		r.floods = append(r.floods, f)
	}
	return nil
}

// phase runs load and adds what it cost the proxies: CPU per request from
// the processes' own accounting, RSS at the end, context switches per
// thread, and for Trellis the share of its CPU the runtime estimates its
// garbage collector took.
func (t *topo) phase(ctx context.Context, px proxies, load func() (phase, error)) (phase, error) {
	procs := []*proc{px.client, px.server}
	var before [2]usage
	var gcBefore [2][2]float64
	for i, p := range procs {
		if p != nil {
			before[i] = treeUsage(p.cmd.Process.Pid)
			if px.metrics {
				gcBefore[i] = gcSeconds(ctx, []string{clientNS, serverNS}[i])
			}
		}
	}
	ph, err := load()
	if err != nil {
		return ph, err
	}
	ph.gcShare = [2]float64{math.NaN(), math.NaN()}
	for i, p := range procs {
		if p == nil || ph.requests == 0 {
			continue
		}
		u := treeUsage(p.cmd.Process.Pid)
		ph.cpu[i] = (u.cpu - before[i].cpu) / time.Duration(ph.requests)
		ph.rss[i], ph.anon[i] = u.rss, u.anon
		ph.switches[i] = switchesOver(before[i].switches, u.switches, ph.requests)
		if px.metrics {
			gc := gcSeconds(ctx, []string{clientNS, serverNS}[i])
			if d := gc[1] - gcBefore[i][1]; d > 0 {
				ph.gcShare[i] = (gc[0] - gcBefore[i][0]) / d
			}
		}
	}
	return ph, nil
}

// gcSeconds scrapes a Trellis proxy's estimate of its GC CPU and its
// process CPU, in seconds.
func gcSeconds(ctx context.Context, ns string) [2]float64 {
	out, err := get(ctx, ns, "http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		return [2]float64{}
	}
	var v [2]float64
	for _, line := range strings.Split(string(out), "\n") {
		for i, name := range []string{"go_cpu_classes_gc_total_cpu_seconds_total ", "process_cpu_seconds_total "} {
			if rest, ok := strings.CutPrefix(line, name); ok {
				v[i], _ = strconv.ParseFloat(rest, 64)
			}
		}
	}
	return v
}

// fortio runs fortio from the client namespace: HTTP/1.1 keep-alive (or
// h2c with h2) over c connections at rate requests a second in all (0: as
// fast as it goes).
func fortio(ctx context.Context, t *topo, url string, rate, c int, d time.Duration, h2 bool) (phase, error) {
	args := []string{"fortio", "load", "-quiet", "-json", "-", "-qps", strconv.Itoa(rate), "-c", strconv.Itoa(c),
		"-t", d.String(), "-p", "50,99", "-timeout", "5s", "-nocatchup", "-uniform", "-allow-initial-errors",
		"-r", "0.00001"} // 10 µs buckets: fortio's default (1 ms) hides sub-millisecond percentiles
	if h2 {
		args = append(args, "-h2")
	}
	out, err := run(ctx, clientNS, t.cpus(false), append(args, url)...)
	if err != nil {
		return phase{}, err
	}
	var res struct {
		ActualQPS         float64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Count       int64
			Percentiles []struct{ Percentile, Value float64 }
		}
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return phase{}, fmt.Errorf("fortio's output: %w", err)
	}
	ph := phase{rate: rate, requests: res.DurationHistogram.Count, rps: res.ActualQPS}
	for code, n := range res.RetCodes {
		if code != "200" {
			ph.errors += n
		}
	}
	for _, p := range res.DurationHistogram.Percentiles {
		d := time.Duration(p.Value * float64(time.Second))
		switch p.Percentile {
		case 50:
			ph.p50 = d
		case 99:
			ph.p99 = d
		}
	}
	return ph, nil
}

// ghz runs unary gRPC health checks from the client namespace over one
// connection at rate calls a second.
func ghz(ctx context.Context, t *topo, target string, rate int, d time.Duration) (phase, error) {
	out, err := run(ctx, clientNS, t.cpus(false), "ghz", "--insecure", "--call", "grpc.health.v1.Health.Check", "-d", "{}",
		"--connections", "1", "-c", strconv.Itoa(grpcWorkers), "-r", strconv.Itoa(rate), "-z", d.String(), "-O", "json", target)
	if err != nil && len(out) == 0 {
		return phase{}, err
	}
	var res struct {
		Count               int64
		Rps                 float64
		LatencyDistribution []struct {
			Percentage int
			Latency    time.Duration
		}
		StatusCodeDistribution map[string]int64
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return phase{}, fmt.Errorf("ghz's output: %w", err)
	}
	ph := phase{rate: rate, requests: res.Count, rps: res.Rps}
	for code, n := range res.StatusCodeDistribution {
		if code != "OK" {
			ph.errors += n
		}
	}
	for _, l := range res.LatencyDistribution {
		switch l.Percentage {
		case 50:
			ph.p50 = l.Latency
		case 99:
			ph.p99 = l.Latency
		}
	}
	return ph, nil
}

// counts reads how many gRPC calls each backend replica answered.
func counts(ctx context.Context) ([]int64, error) {
	out, err := get(ctx, serverNS, "http://127.0.0.1:8080/counts")
	if err != nil {
		return nil, err
	}
	var c []int64
	return c, json.Unmarshal(out, &c)
}

// idlePerConn holds n idle keep-alive connections to the client proxy and
// returns its RSS growth per connection, in KiB.
func idlePerConn(ctx context.Context, t *topo, client *proc, url string, n int) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	before := treeUsage(client.cmd.Process.Pid).rss
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", clientNS, "taskset", "-c", t.cpus(false), self, "idle", strconv.Itoa(n), url)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		stdin.Close()
		_ = cmd.Wait()
		return 0, fmt.Errorf("the idle helper failed: %s", strings.TrimSpace(stderr.String()))
	}
	time.Sleep(time.Second)
	after := treeUsage(client.cmd.Process.Pid).rss
	stdin.Close() // the helper closes its connections and exits
	_ = cmd.Wait()
	return float64(after-before) / float64(n), nil
}
