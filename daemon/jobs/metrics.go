package jobs

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a job run, the values of inboxd_job_runs_total{result}.
const (
	ResultOK          = "ok"
	ResultFailed      = "failed"
	ResultInterrupted = "interrupted"
	// ResultCanceled: the process shut down; the job stays running in the KV
	// and is resumed by the next start (or another replica).
	ResultCanceled = "canceled"
	// ResultLeaseLost: the lease expired under the job (a stalled KV);
	// another replica may have taken it over.
	ResultLeaseLost = "lease_lost"
)

func results() []string {
	return []string{ResultOK, ResultFailed, ResultInterrupted, ResultCanceled, ResultLeaseLost}
}

type metrics struct {
	running *prometheus.GaugeVec
	runs    *prometheus.CounterVec
	queued  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inboxd_jobs_running",
			Help: "Background jobs running now, by job.",
		}, []string{"job"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_job_runs_total",
			Help: "Background job runs finished, by job and result: ok, failed, interrupted, canceled, lease_lost.",
		}, []string{"job", "result"}),
		// The poller and the workflow runner register the same name with
		// their own pool label: same help, same label names, so one registry
		// takes all of them.
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "inboxd_worker_pool_queue_depth",
			Help:        "Work waiting for a worker, by pool.",
			ConstLabels: prometheus.Labels{"pool": "jobs"},
		}),
	}
	for _, k := range Kinds() {
		m.running.WithLabelValues(string(k))
		for _, r := range results() {
			m.runs.WithLabelValues(string(k), r)
		}
	}
	if reg == nil {
		return m, nil
	}
	// A second Manager on one registry (tests, the CLI next to a daemon's
	// registry) shares the collectors of the first.
	var err error
	if m.running, err = register(reg, m.running); err != nil {
		return nil, err
	}
	if m.runs, err = register(reg, m.runs); err != nil {
		return nil, err
	}
	if m.queued, err = register(reg, m.queued); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
