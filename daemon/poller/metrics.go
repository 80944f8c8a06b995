package poller

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	polls             *prometheus.CounterVec
	duration          prometheus.Histogram
	lag               prometheus.Histogram
	newMessages       prometheus.Counter
	uidvalidityResets prometheus.Counter
	queued            prometheus.Gauge
}

// tenantStates are the values of the state label, all exported up front so
// that dashboards never see a series appear from nothing.
func tenantStates() []string {
	return []string{StateStarting, StateActive, StateBackoff, StateAuthFailed, StateElsewhere}
}

func newMetrics(reg prometheus.Registerer, p *Poller) *metrics {
	m := &metrics{
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_polls_total",
			Help: "Inbox polls by result: ok, error, auth_error.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "inboxd_poll_duration_seconds",
			Help:    "Time one inbox poll took.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "inboxd_poll_lag_seconds",
			Help:    "How late a poll started against its schedule (waiting for a worker or host slot).",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		newMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inboxd_new_messages_total",
			Help: "New inbox messages detected.",
		}),
		uidvalidityResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inboxd_uidvalidity_resets_total",
			Help: "Inboxes re-baselined because their UIDVALIDITY changed.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "inboxd_worker_pool_queue_depth",
			Help:        "Work waiting for a worker, by pool.",
			ConstLabels: prometheus.Labels{"pool": "poll"},
		}),
	}
	for _, r := range []string{"ok", "error", "auth_error"} {
		m.polls.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.polls, m.duration, m.lag, m.newMessages, m.uidvalidityResets, m.queued, &tenantCollector{p: p})
	}
	return m
}

// tenantCollector exports inboxd_tenants{state} from the live tenant set.
type tenantCollector struct{ p *Poller }

func tenantsDesc() *prometheus.Desc {
	return prometheus.NewDesc("inboxd_tenants", "Users watched by this replica, by state.", []string{"state"}, nil)
}

func (c *tenantCollector) Describe(ch chan<- *prometheus.Desc) { ch <- tenantsDesc() }

func (c *tenantCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.p.states()
	for _, s := range tenantStates() {
		ch <- prometheus.MustNewConstMetric(tenantsDesc(), prometheus.GaugeValue, float64(counts[s]), s)
	}
}
