package pluginhost

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a call, the "result" label of inboxd_plugin_calls_total.
const (
	resultOK          = "ok"          // the tool answered
	resultToolError   = "tool_error"  // the tool answered with IsError
	resultError       = "error"       // the call failed: handler error, deadline, bad answer
	resultUnavailable = "unavailable" // the plugin was not running (starting, restarting, crashed)
)

type hostMetrics struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	restarts *prometheus.CounterVec
	// circuitOpen is 1 while a plugin's circuit is open or half-open.
	circuitOpen *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*hostMetrics, error) {
	m := &hostMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_plugin_calls_total",
			Help: "Tool calls sent to plugins, by plugin, tool and result (ok, tool_error, error, unavailable).",
		}, []string{"plugin", "tool", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inboxd_plugin_call_duration_seconds",
			Help:    "Time of tool calls to plugins, by plugin, including the host services they used.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30, 120},
		}, []string{"plugin"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_plugin_restarts_total",
			Help: "Plugin processes restarted after they crashed or failed a health check, by plugin.",
		}, []string{"plugin"}),
		circuitOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inboxd_plugin_circuit_open",
			Help: "1 while a plugin's circuit breaker is open or half-open (it crashed too often in a row: calls fail fast, it is not restarted until a cool-down ends, then probed with one call), else 0; by plugin.",
		}, []string{"plugin"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.calls, m.duration, m.restarts, m.circuitOpen} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// known exports zero series for a plugin and its tools (names as
// "{plugin}-{tool}"), so dashboards and alerts see every plugin, tool and
// result before the first call, error or restart.
func (m *hostMetrics) known(plugin string, tools []string) {
	m.restarts.WithLabelValues(plugin)
	m.circuitOpen.WithLabelValues(plugin)
	m.duration.WithLabelValues(plugin)
	for _, name := range tools {
		tool := strings.TrimPrefix(name, plugin+"-")
		for _, r := range []string{resultOK, resultToolError, resultError, resultUnavailable} {
			m.calls.WithLabelValues(plugin, tool, r)
		}
	}
}
