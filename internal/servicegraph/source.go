// Package servicegraph computes the mesh's service graph — workloads and
// services as nodes, one edge per protocol with rate, errors, latency
// percentiles and mTLS share — from the proxies' Istio-standard metrics,
// the way Kiali does. The figures come from a Source: the control plane's
// own scrape store (one-host mode, no other server) or a real Prometheus
// over its HTTP API. internal/dashboard serves the result; the CLI prints
// it.
package servicegraph

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/trellis-mesh/trellis/internal/metricstore"
)

// Query and Group are the one question the graph asks of a Source: how
// much did these counters grow in this window, summed by these labels.
type (
	Query = metricstore.Query
	Group = metricstore.Group
)

// A Source answers Queries. Implementations are safe for concurrent use.
type Source interface {
	Increase(ctx context.Context, q Query) ([]Group, error)
}

// Local reads the control plane's scrape store.
func Local(s *metricstore.Store) Source { return localSource{s} }

type localSource struct{ s *metricstore.Store }

func (l localSource) Increase(_ context.Context, q Query) ([]Group, error) {
	return l.s.Increase(q), nil
}

// Prometheus reads a Prometheus server's HTTP API at url (e.g.
// http://127.0.0.1:9090) with PromQL's increase(); its figures are
// extrapolated, so counts are not whole numbers.
func Prometheus(url string) (Source, error) {
	c, err := promapi.NewClient(promapi.Config{Address: url})
	if err != nil {
		return nil, fmt.Errorf("prometheus at %q: %w", url, err)
	}
	return promSource{api: promv1.NewAPI(c), url: url}, nil
}

type promSource struct {
	api promv1.API
	url string
}

func (p promSource) Increase(ctx context.Context, q Query) ([]Group, error) {
	end := q.End
	if end.IsZero() {
		end = time.Now()
	}
	expr := PromQL(q)
	val, _, _, err := p.api.Query(ctx, expr, end)
	if err != nil {
		return nil, fmt.Errorf("prometheus at %s: %s: %w", p.url, expr, err)
	}
	vec, ok := val.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("prometheus at %s: %s: got a %s, want a vector", p.url, expr, val.Type())
	}
	out := make([]Group, 0, len(vec))
	for _, s := range vec {
		g := Group{Labels: map[string]string{}, Value: float64(s.Value)}
		for _, l := range q.By {
			g.Labels[l] = string(s.Metric[model.LabelName(l)])
		}
		out = append(out, g)
	}
	return out, nil
}

// PromQL renders q as the expression a Prometheus source evaluates.
func PromQL(q Query) string {
	var sel []string
	for _, k := range slices.Sorted(maps.Keys(q.Match)) {
		sel = append(sel, fmt.Sprintf("%s=%q", k, q.Match[k]))
	}
	secs := int(q.Window.Round(time.Second) / time.Second)
	return fmt.Sprintf("sum by (%s) (increase(%s{%s}[%ds]))", strings.Join(q.By, ", "), q.Metric, strings.Join(sel, ", "), max(secs, 1))
}
