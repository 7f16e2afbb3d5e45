package metricstore

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A counter's growth in a window: a series born after the first scrape
// counts from zero, a reset counts from zero, samples outside the window
// do not count.
func TestIncrease(t *testing.T) {
	s := New(Config{Retention: time.Hour})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := func(v float64, code string) Sample {
		return Sample{Name: "req_total", Labels: map[string]string{"code": code, "pod": "a"}, Value: v}
	}
	s.add("a", "u", t0, time.Time{}, []Sample{c(10, "200")}, 0)
	s.add("a", "u", t0.Add(5*time.Second), time.Time{}, []Sample{c(15, "200"), c(2, "500")}, 0) // 500 born: +2
	s.add("a", "u", t0.Add(10*time.Second), time.Time{}, []Sample{c(3, "200"), c(2, "500")}, 0) // reset: +3
	s.add("a", "u", t0.Add(15*time.Second), time.Time{}, []Sample{c(4, "200"), c(6, "500")}, 0)

	tests := []struct {
		name string
		q    Query
		want string
	}{
		{"all, by code", Query{Metric: "req_total", By: []string{"code"}, Window: time.Minute, End: t0.Add(15 * time.Second)},
			"code=200:9 code=500:6"},
		{"summed", Query{Metric: "req_total", Window: time.Minute, End: t0.Add(15 * time.Second)}, ":15"},
		{"last 5s", Query{Metric: "req_total", By: []string{"code"}, Window: 5 * time.Second, End: t0.Add(15 * time.Second)},
			"code=200:1 code=500:4"},
		{"match", Query{Metric: "req_total", Match: map[string]string{"code": "500"}, Window: time.Minute, End: t0.Add(10 * time.Second)},
			":2"},
		{"window before data", Query{Metric: "req_total", Window: time.Minute, End: t0.Add(-time.Minute)}, ""},
		{"other metric", Query{Metric: "nope", Window: time.Minute, End: t0.Add(time.Minute)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, g := range s.Increase(tt.q) {
				var kv []string
				for k, v := range g.Labels {
					kv = append(kv, k+"="+v)
				}
				got = append(got, fmt.Sprintf("%s:%g", strings.Join(kv, ","), g.Value))
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("Increase(%+v) = %q, want %q", tt.q, strings.Join(got, " "), tt.want)
			}
		})
	}
}

// Scraping a real HTTP endpoint: counters and histograms are kept, a
// failing target is reported with its error, old samples expire.
func TestScrape(t *testing.T) {
	var n atomic.Int64
	started := time.Now().Add(-10 * time.Second).Unix()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		v := n.Add(1)
		fmt.Fprintf(w, "# TYPE hits_total counter\nhits_total{x=\"1\"} %d\n", v*10)
		fmt.Fprintf(w, "# TYPE lat histogram\nlat_bucket{le=\"5\"} %d\nlat_bucket{le=\"+Inf\"} %d\nlat_sum 1\nlat_count %d\n", v, 2*v, 2*v)
		fmt.Fprintf(w, "# TYPE temp gauge\ntemp 3\n")
		fmt.Fprintf(w, "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %d\n", started)
	}))
	defer srv.Close()
	s := New(Config{Retention: time.Hour})
	ctx := context.Background()
	targets := []Target{{Key: "ok", URL: srv.URL}, {Key: "down", URL: "http://127.0.0.1:1/metrics"}}
	for range 3 {
		s.ScrapeOnce(ctx, srv.Client(), targets)
	}
	got := s.Increase(Query{Metric: "hits_total", Window: time.Hour})
	// The process started 10 s ago, within the window: its counters
	// grew from zero then.
	if len(got) != 1 || got[0].Value != 30 {
		t.Errorf("hits_total growth = %+v, want 30 (0 at the process's start, then 10, 20, 30)", got)
	}
	inf := s.Increase(Query{Metric: "lat_bucket", Match: map[string]string{"le": "+Inf"}, Window: time.Hour})
	if len(inf) != 1 || inf[0].Value != 6 {
		t.Errorf("lat_bucket{le=+Inf} growth = %+v, want 6 (one series, 0 -> 6)", inf)
	}
	if late := s.Increase(Query{Metric: "hits_total", Window: time.Hour, End: time.Now().Add(-5 * time.Second)}); len(late) != 0 && late[0].Value != 0 {
		t.Errorf("growth up to 5 s ago = %+v, want none (the first scrape was after)", late)
	}
	if g := s.Increase(Query{Metric: "temp", Window: time.Hour}); len(g) != 0 {
		t.Errorf("gauge kept: %+v", g)
	}
	st := s.Targets()
	if len(st) != 2 || st[0].Key != "down" || st[0].LastError == "" || st[1].LastError != "" || st[1].Series != 5 {
		t.Errorf("Targets() = %+v, want down with an error and ok with 5 series", st)
	}

	short := New(Config{Retention: time.Minute})
	at := time.Now()
	short.add("a", "u", at.Add(-2*time.Minute), time.Time{}, []Sample{{Name: "c", Labels: map[string]string{}, Value: 1}}, 0)
	short.add("b", "u", at, time.Time{}, nil, 0)
	if ts := short.Targets(); len(ts) != 1 || ts[0].Key != "b" {
		t.Errorf("after retention, Targets() = %+v, want only b", ts)
	}
}

// MaxSeries bounds a target that explodes its label values.
func TestMaxSeries(t *testing.T) {
	s := New(Config{MaxSeries: 3})
	var smp []Sample
	for i := range 10 {
		smp = append(smp, Sample{Name: "c", Labels: map[string]string{"i": fmt.Sprint(i)}, Value: 1})
	}
	s.add("a", "u", time.Now(), time.Time{}, smp, 0)
	if st := s.Targets()[0]; st.Series != 3 || st.DroppedSeries != 7 {
		t.Errorf("Targets() = %+v, want 3 kept and 7 dropped", st)
	}
}

// TestScrapeFollowsNoRedirect: a target answers for itself; one that
// redirects the scraper elsewhere is a failed scrape.
func TestScrapeFollowsNoRedirect(t *testing.T) {
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("the scraper followed a redirect")
	}))
	defer elsewhere.Close()
	redirect := httptest.NewServer(http.RedirectHandler(elsewhere.URL, http.StatusFound))
	defer redirect.Close()
	s := New(Config{Interval: time.Hour, Timeout: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx, func() []Target { return []Target{{Key: "r", URL: redirect.URL}} }) }()
	for range 100 {
		if st := s.Targets(); len(st) == 1 && st[0].LastError != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if st := s.Targets(); len(st) != 1 || !strings.Contains(st[0].LastError, "302") {
		t.Errorf("Targets() = %+v, want the redirect as an error", st)
	}
}
