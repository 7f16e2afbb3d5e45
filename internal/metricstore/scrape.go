package metricstore

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"
)

// Target is one endpoint to scrape.
type Target struct {
	Key string // stable name, e.g. the pod's namespace/name
	URL string // e.g. http://10.200.0.4:15020/stats/prometheus
	// Admit, when set, says which samples the target may report: the
	// others are refused (and counted), as a target answers for itself
	// only.
	Admit func(Sample) bool
}

// Run scrapes every target targets returns, every Interval, until ctx is
// done; it returns nil then. targets is called once per round, on Run's
// goroutine. A failed scrape is recorded in Targets, never fatal.
func (s *Store) Run(ctx context.Context, targets func() []Target) error {
	// A target answers for itself: a redirect (to another pod, or off
	// the mesh) is a failed scrape, never followed.
	hc := &http.Client{Timeout: s.cfg.Timeout, Transport: s.cfg.Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		s.ScrapeOnce(ctx, hc, targets())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// ScrapeOnce scrapes ts concurrently (16 at a time) and returns when all
// are recorded.
func (s *Store) ScrapeOnce(ctx context.Context, hc *http.Client, ts []Target) {
	var g errgroup.Group
	g.SetLimit(16)
	for _, t := range ts {
		g.Go(func() error {
			at := time.Now()
			samples, started, err := s.scrape(ctx, hc, t.URL)
			if err != nil {
				s.failed(t.Key, t.URL, at, err)
				return nil
			}
			refused := 0
			if t.Admit != nil {
				samples = slices.DeleteFunc(samples, func(smp Sample) bool {
					if t.Admit(smp) {
						return false
					}
					refused++
					return true
				})
			}
			s.add(t.Key, t.URL, at, started, samples, refused)
			return nil
		})
	}
	_ = g.Wait()
}

func (s *Store) scrape(ctx context.Context, hc *http.Client, url string) ([]Sample, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, time.Time{}, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, time.Time{}, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return Parse(io.LimitReader(resp.Body, s.cfg.MaxBytes))
}

// Parse reads Prometheus text exposition and returns its counter and
// histogram samples (histograms as _bucket with "le", _sum and _count),
// and the process's start (process_start_time_seconds) when it is given.
func Parse(r io.Reader) ([]Sample, time.Time, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("parse metrics: %w", err)
	}
	var started time.Time
	if f := fams["process_start_time_seconds"]; f != nil && len(f.GetMetric()) == 1 {
		sec := f.GetMetric()[0].GetGauge().GetValue()
		started = time.Unix(0, int64(sec*float64(time.Second)))
	}
	var out []Sample
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := make(map[string]string, len(m.GetLabel())+1)
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, Sample{Name: name, Labels: labels, Value: m.GetCounter().GetValue()})
			case dto.MetricType_HISTOGRAM:
				out = append(out, histogram(name, labels, m.GetHistogram())...)
			}
		}
	}
	return out, started, nil
}

func histogram(name string, labels map[string]string, h *dto.Histogram) []Sample {
	out := []Sample{
		{Name: name + "_sum", Labels: labels, Value: h.GetSampleSum()},
		{Name: name + "_count", Labels: labels, Value: float64(h.GetSampleCount())},
	}
	withLE := func(le string) map[string]string {
		l := make(map[string]string, len(labels)+1)
		for k, v := range labels {
			l[k] = v
		}
		l["le"] = le
		return l
	}
	inf := false
	for _, b := range h.GetBucket() {
		inf = inf || math.IsInf(b.GetUpperBound(), 1)
		out = append(out, Sample{Name: name + "_bucket", Labels: withLE(formatLE(b.GetUpperBound())), Value: float64(b.GetCumulativeCount())})
	}
	if !inf { // the exposition may leave out the +Inf bucket; it equals the count
		out = append(out, Sample{Name: name + "_bucket", Labels: withLE("+Inf"), Value: float64(h.GetSampleCount())})
	}
	return out
}

func formatLE(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return model.SampleValue(v).String()
}
