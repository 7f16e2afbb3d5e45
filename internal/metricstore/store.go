// Package metricstore scrapes Prometheus endpoints (the proxies'
// :15020/stats/prometheus) into a bounded in-memory store and answers
// "how much did these counters grow in this window" — all the service
// graph needs, so one-host mode runs without a Prometheus server. The
// control plane owns one Store; internal/servicegraph reads it.
//
// Counters and histograms are kept (a histogram as its _bucket, _sum and
// _count series, as Prometheus stores it); gauges and untyped samples are
// dropped. Memory is bounded by Config.Retention and Config.MaxSeries.
package metricstore

import (
	"cmp"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config configures a Store. Zero fields take the defaults given.
type Config struct {
	// Interval between scrapes of each target. Default 5 s.
	Interval time.Duration
	// Timeout of one scrape. Default 3 s.
	Timeout time.Duration
	// Retention: samples older than this are dropped, and so are targets
	// not scraped successfully for this long. Default 30 min.
	Retention time.Duration
	// MaxSeries bounds the series kept per target; new series beyond it
	// are dropped (and counted in Status). Default 20 000.
	MaxSeries int
	// MaxBytes bounds one scrape's body. Default 16 MiB.
	MaxBytes int64
	// Transport makes the scrapes' requests. Default
	// http.DefaultTransport; on Kubernetes, the API server's (targets are
	// reached through its pod proxy).
	Transport http.RoundTripper
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 3 * time.Second
	}
	if c.Retention <= 0 {
		c.Retention = 30 * time.Minute
	}
	if c.MaxSeries <= 0 {
		c.MaxSeries = 20000
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 16 << 20
	}
}

// Store holds scraped samples. Safe for concurrent use: Run writes, any
// number of readers query.
type Store struct {
	cfg Config

	mu      sync.RWMutex
	targets map[string]*target // guarded by mu: by Target.Key
}

// New returns an empty store.
func New(cfg Config) *Store {
	cfg.setDefaults()
	return &Store{cfg: cfg, targets: map[string]*target{}}
}

// target is one scraped endpoint's series.
type target struct {
	url        string
	series     map[string]*series // by seriesKey
	scrapes    int
	lastTry    time.Time
	lastOK     time.Time
	lastErr    string
	dropped    int // series refused by MaxSeries
	refused    int // samples of the last scrape Target.Admit refused
	prevScrape time.Time
}

// series is one metric name and label set: samples oldest first.
type series struct {
	name   string
	labels map[string]string
	t      []time.Time
	v      []float64
}

func seriesKey(name string, labels map[string]string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// Sample is one point a scrape produced.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// add records one successful scrape of key at time at. Counters start at
// zero, so a series seen for the first time gets a zero sample before its
// first value: at the previous scrape when there was one, else at started
// (the process's start, when known and within the retention). Its first
// value is then growth within the window, not history.
// refused counts the samples the target may not report (Target.Admit).
func (s *Store) add(key, url string, at, started time.Time, samples []Sample, refused int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg := s.targetLocked(key)
	tg.url, tg.lastTry, tg.lastOK, tg.lastErr = url, at, at, ""
	tg.refused = refused
	for _, smp := range samples {
		k := seriesKey(smp.Name, smp.Labels)
		sr := tg.series[k]
		if sr == nil {
			if len(tg.series) >= s.cfg.MaxSeries {
				tg.dropped++
				continue
			}
			sr = &series{name: smp.Name, labels: smp.Labels}
			tg.series[k] = sr
			switch {
			case tg.scrapes > 0:
				sr.t, sr.v = append(sr.t, tg.prevScrape), append(sr.v, 0)
			case !started.IsZero() && started.Before(at) && at.Sub(started) < s.cfg.Retention:
				sr.t, sr.v = append(sr.t, started), append(sr.v, 0)
			}
		}
		sr.t, sr.v = append(sr.t, at), append(sr.v, smp.Value)
	}
	tg.scrapes++
	tg.prevScrape = at
	s.expireLocked(at, tg)
}

// failed records a failed scrape of key.
func (s *Store) failed(key, url string, at time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg := s.targetLocked(key)
	tg.url, tg.lastTry, tg.lastErr = url, at, err.Error()
	s.expireLocked(at, tg)
}

// targetLocked returns the target of key, made when new.
func (s *Store) targetLocked(key string) *target {
	tg := s.targets[key]
	if tg == nil {
		tg = &target{series: map[string]*series{}}
		s.targets[key] = tg
	}
	return tg
}

// expireLocked drops tg's samples older than the retention and its empty
// series, then every target nobody has tried to scrape for as long (pods
// gone). Only the scraped target's series are walked: a round of scrapes
// costs what the series are, not that squared.
func (s *Store) expireLocked(now time.Time, tg *target) {
	cutoff := now.Add(-s.cfg.Retention)
	for k, sr := range tg.series {
		i := 0
		for i < len(sr.t) && sr.t[i].Before(cutoff) {
			i++
		}
		if i == len(sr.t) {
			delete(tg.series, k)
			continue
		}
		// Resliced, not copied: append moves the live part when it grows.
		sr.t, sr.v = sr.t[i:], sr.v[i:]
	}
	for key, other := range s.targets {
		if other.lastTry.Before(cutoff) {
			delete(s.targets, key)
		}
	}
}

// Query selects series by metric name and exact label values, and sums
// their growth in a window by the labels in By.
type Query struct {
	Metric string
	Match  map[string]string
	By     []string
	// The window is (End-Window, End]. A zero End is now.
	Window time.Duration
	End    time.Time
}

// Group is one result of a Query: the By labels and the summed growth.
type Group struct {
	Labels map[string]string
	Value  float64
}

// Increase answers q like PromQL's sum by (By) (increase(Metric{Match}[Window]))
// at End, without extrapolation: the growth between the last sample at or
// before the window's start and the last sample in it, counter resets
// counted as growth from zero. Groups are sorted by their labels.
func (s *Store) Increase(q Query) []Group {
	end := q.End
	if end.IsZero() {
		end = time.Now()
	}
	start := end.Add(-q.Window)
	sums := map[string]*Group{}
	s.mu.RLock()
	for _, tg := range s.targets {
		for _, sr := range tg.series {
			if sr.name != q.Metric || !matches(sr.labels, q.Match) {
				continue
			}
			inc, ok := sr.increase(start, end)
			if !ok {
				continue
			}
			by := make(map[string]string, len(q.By))
			for _, l := range q.By {
				by[l] = sr.labels[l]
			}
			k := seriesKey("", by)
			if g := sums[k]; g != nil {
				g.Value += inc
			} else {
				sums[k] = &Group{Labels: by, Value: inc}
			}
		}
	}
	s.mu.RUnlock()
	out := make([]Group, 0, len(sums))
	for _, k := range slices.Sorted(maps.Keys(sums)) {
		out = append(out, *sums[k])
	}
	return out
}

func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// increase is the series' growth in (start, end]; false when it has no
// sample in the window.
func (sr *series) increase(start, end time.Time) (float64, bool) {
	// first: the last sample at or before start (the baseline), else the
	// first sample in the window.
	i, exact := slices.BinarySearchFunc(sr.t, start, func(t, s time.Time) int { return t.Compare(s) })
	if !exact && i > 0 {
		i-- // sr.t[i] was the first sample after start
	}
	var inc float64
	seen := false
	for j := i + 1; j < len(sr.t) && !sr.t[j].After(end); j++ {
		seen = true
		if d := sr.v[j] - sr.v[j-1]; d >= 0 {
			inc += d
		} else {
			inc += sr.v[j] // reset: the counter restarted from zero
		}
	}
	return inc, seen
}

// TargetStatus describes one scraped target.
type TargetStatus struct {
	Key           string    `json:"key"`
	URL           string    `json:"url"`
	LastScrape    time.Time `json:"lastScrape"` // last attempt
	LastOK        time.Time `json:"lastOK"`
	LastError     string    `json:"lastError,omitempty"`
	Series        int       `json:"series"`
	DroppedSeries int       `json:"droppedSeries"`
	// RefusedSamples are those of the last scrape the target may not
	// report (another pod's traffic claimed as its own).
	RefusedSamples int `json:"refusedSamples"`
	Scrapes        int `json:"scrapes"` // successful ones
}

// Targets reports every target the store holds, sorted by key.
func (s *Store) Targets() []TargetStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]TargetStatus, 0, len(s.targets))
	for key, tg := range s.targets {
		out = append(out, TargetStatus{Key: key, URL: tg.url, LastScrape: tg.lastTry, LastOK: tg.lastOK, LastError: tg.lastErr,
			Series: len(tg.series), DroppedSeries: tg.dropped, RefusedSamples: tg.refused, Scrapes: tg.scrapes})
	}
	slices.SortFunc(out, func(a, b TargetStatus) int { return cmp.Compare(a.Key, b.Key) })
	return out
}
