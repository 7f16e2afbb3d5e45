package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/metricstore"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// LogSize is how many recent requests a RequestLog keeps, over all
// proxies.
const LogSize = 2000

// RequestLog collects the proxies' recent requests (their
// /stats/recent-requests) for the dashboard. Safe for concurrent use.
type RequestLog struct {
	mu      sync.Mutex
	entries []Request         // guarded by mu: oldest first, at most LogSize
	next    map[string]uint64 // guarded by mu: per target, the Seq to ask from
}

// NewRequestLog returns an empty log.
func NewRequestLog() *RequestLog { return &RequestLog{next: map[string]uint64{}} }

// Poll fetches every target's new requests every interval until ctx is
// done, then returns nil. targets is called once per round.
func (l *RequestLog) Poll(ctx context.Context, interval time.Duration, targets func() []metricstore.Target) error {
	hc := &http.Client{Timeout: 3 * time.Second}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var g errgroup.Group
		g.SetLimit(16)
		for _, t := range targets() {
			g.Go(func() error { l.fetch(ctx, hc, t); return nil })
		}
		_ = g.Wait()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// fetch reads one target's requests since the last fetch. Failures are
// dropped: the metrics scrape reports unreachable proxies.
func (l *RequestLog) fetch(ctx context.Context, hc *http.Client, t metricstore.Target) {
	l.mu.Lock()
	after := l.next[t.Key]
	l.mu.Unlock()
	page, err := getPage(ctx, hc, fmt.Sprintf("%s?after=%d", t.URL, after))
	if err != nil {
		return
	}
	if page.Next < after { // the proxy restarted: start over
		if page, err = getPage(ctx, hc, t.URL); err != nil {
			return
		}
	}
	var add []Request
	for _, r := range page.Requests {
		if r.Reporter == "destination" || r.DestPrincipal == "unknown" { // as the graph counts
			add = append(add, fromRecent(r))
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next[t.Key] = page.Next
	l.entries = append(l.entries, add...)
	slices.SortStableFunc(l.entries, func(a, b Request) int { return a.Time.Compare(b.Time) })
	if n := len(l.entries); n > LogSize {
		l.entries = slices.Delete(l.entries, 0, n-LogSize)
	}
}

func getPage(ctx context.Context, hc *http.Client, url string) (telemetry.RecentPage, error) {
	var page telemetry.RecentPage
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return page, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return page, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return page, fmt.Errorf("%s: %s", url, resp.Status)
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&page)
	return page, err
}

// fromRecent names a proxy's record with graph node IDs.
func fromRecent(r telemetry.Recent) Request {
	node := func(nsName string) string {
		if nsName == "unknown" || nsName == "" || strings.HasSuffix(nsName, "/unknown") {
			return "unknown"
		}
		return "wl:" + nsName
	}
	r.Source, r.Dest = node(r.Source), node(r.Dest)
	out := Request{Recent: r}
	if r.ServiceName != "" && r.ServiceName != "unknown" {
		out.Service = "svc:" + r.ServiceNamespace + "/" + r.ServiceName
	}
	return out
}

// Latest returns the log, newest first.
func (l *RequestLog) Latest() []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.entries)
	slices.Reverse(out)
	return out
}
