package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
)

// LoadReport is what `trellis example load` prints: how many requests
// succeeded and failed, the first errors, and which replicas answered
// (by the "hello from NAME" body of hello-server), first and last.
type LoadReport struct {
	Sent       int                        `json:"sent"`
	OK         int                        `json:"ok"`
	Failed     int                        `json:"failed"`
	Errors     []string                   `json:"errors,omitempty"`
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
	var rate, workers int
	var duration, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "load URL",
		Short: "GET URL at a fixed rate for a while; print a JSON report of successes, failures and responders",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rate <= 0 || rate > 20000 || duration <= 0 || duration > time.Hour {
				return errors.New("--rate must be 1-20000 and --duration at most 1h")
			}
			rep := runLoad(args[0], rate, workers, duration, timeout)
			enc := json.NewEncoder(o.out)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		},
	}
	cmd.Flags().IntVar(&rate, "rate", 100, "requests per second")
	cmd.Flags().IntVar(&workers, "workers", 16, "concurrent requests at most (each a keep-alive connection)")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "how long to send")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-request timeout")
	return cmd
}

func runLoad(url string, rate, workers int, duration, timeout time.Duration) LoadReport {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}
	hc := &http.Client{Timeout: timeout, Transport: tr}
	defer tr.CloseIdleConnections()
	rep := LoadReport{Responders: map[string]*ResponderStats{}}
	var mu sync.Mutex // guards rep
	record := func(body string, err error) {
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
	jobs := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				record(get(hc, url))
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.NewTimer(duration)
	defer tick.Stop()
	defer end.Stop()
	for sent := false; !sent; {
		select {
		case <-end.C:
			sent = true
		case <-tick.C:
			select {
			case jobs <- struct{}{}:
			default: // every worker busy: count it rather than queue without bound
				record("", errors.New("client saturated: no worker free at the scheduled time"))
			}
			rep.Sent++ // only this goroutine writes Sent
		}
	}
	close(jobs)
	wg.Wait()
	return rep
}

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
