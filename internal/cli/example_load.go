package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
)

// LoadReport is what `trellis example load` prints: how many requests
// succeeded and failed, the first errors, and which replicas answered
// (by the "hello from NAME" body of hello-server), first and last.
type LoadReport struct {
	Sent   int      `json:"sent"`
	OK     int      `json:"ok"`
	Failed int      `json:"failed"`
	Errors []string `json:"errors,omitempty"`
	// Latency of the successful requests, in milliseconds.
	P50        float64                    `json:"p50Ms"`
	P99        float64                    `json:"p99Ms"`
	Max        float64                    `json:"maxMs"`
	Responders map[string]*ResponderStats `json:"responders"`
}

// ResponderStats is one replica's share of a load run.
type ResponderStats struct {
	Count int       `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// newLoadCmd sends HTTP GETs at a fixed rate for a bounded time and
// reports every failure: the availability tests' and the demo's traffic.
func newLoadCmd(o *options) *cobra.Command {
	var rate, conns int
	var duration, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "load URL",
		Short: "GET URL at a fixed rate for a while; print a JSON report of successes, failures and responders",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rate <= 0 || rate > 20000 || duration <= 0 || duration > time.Hour {
				return errors.New("--rate must be 1-20000 and --duration at most 1h")
			}
			rep := runLoad(args[0], rate, conns, duration, timeout)
			enc := json.NewEncoder(o.out)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		},
	}
	cmd.Flags().IntVar(&rate, "rate", 100, "requests per second")
	cmd.Flags().IntVar(&conns, "connections", 16, "keep-alive connections kept idle between requests")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "how long to send")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-request timeout")
	return cmd
}

func runLoad(url string, rate, conns int, duration, timeout time.Duration) LoadReport {
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	hc := &http.Client{Timeout: timeout, Transport: tr}
	defer tr.CloseIdleConnections()
	rep := LoadReport{Responders: map[string]*ResponderStats{}}
	var mu sync.Mutex        // guards rep
	var took []time.Duration // guarded by mu
	record := func(body string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			rep.Failed++
			if len(rep.Errors) < 10 {
				rep.Errors = append(rep.Errors, time.Now().Format(time.RFC3339Nano)+" "+err.Error())
			}
			return
		}
		rep.OK++
		took = append(took, d)
		name := strings.TrimSpace(strings.TrimPrefix(body, "hello from "))
		now := time.Now()
		st := rep.Responders[name]
		if st == nil {
			st = &ResponderStats{First: now}
			rep.Responders[name] = st
		}
		st.Count++
		st.Last = now
	}
	// Each request runs on its own goroutine, so a request the machine is
	// slow to serve delays no later one; at most maxInFlight at once.
	inFlight := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.NewTimer(duration)
	defer tick.Stop()
	defer end.Stop()
	for sent := false; !sent; {
		select {
		case <-end.C:
			sent = true
		case <-tick.C:
			rep.Sent++ // only this goroutine writes Sent
			select {
			case inFlight <- struct{}{}:
			default:
				record("", 0, fmt.Errorf("more than %d requests in flight: the target stopped answering", maxInFlight))
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-inFlight }()
				start := time.Now()
				body, err := get(hc, url)
				record(body, time.Since(start), err)
			}()
		}
	}
	wg.Wait()
	if len(took) > 0 {
		slices.Sort(took)
		ms := func(q float64) float64 { return float64(took[int(q*float64(len(took)-1))].Microseconds()) / 1000 }
		rep.P50, rep.P99, rep.Max = ms(0.5), ms(0.99), ms(1)
	}
	return rep
}

// maxInFlight bounds a load run's concurrent requests.
const maxInFlight = 1024

func get(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}
