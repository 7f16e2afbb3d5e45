package push

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the config stream's Prometheus metrics.
type Metrics struct {
	connected   prometheus.Gauge
	pushes      *prometheus.CounterVec
	nacks       prometheus.Counter
	convergence prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_control_connected_proxies",
			Help: "Config streams open now."}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_control_pushes_total",
			Help: "Config updates sent to proxies, by type (full, incremental)."}, []string{"type"}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_control_nacks_total",
			Help: "Config updates proxies refused."}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_control_convergence_seconds",
			Help:    "Time from a change reaching the control plane's source to a proxy's ACK of it.",
			Buckets: []float64{.005, .01, .025, .05, .1, .15, .2, .3, .5, 1, 2.5, 5, 10, 30}}),
	}
	reg.MustRegister(m.connected, m.pushes, m.nacks, m.convergence)
	return m
}

func (m *Metrics) pushed(full bool) {
	if full {
		m.pushes.WithLabelValues("full").Inc()
	} else {
		m.pushes.WithLabelValues("incremental").Inc()
	}
}
