package pluginhost

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/tools"
)

// The cost of one tool call through the whole host path (token, user
// context, deadline, metrics, go-plugin gRPC: the test plugin is an SDK
// plugin, called over pooled CallStream streams), sequential and with 8
// and 32 concurrent callers; p50/p99 latency and calls per second are
// reported.
// Run: go test -run '^$' -bench . ./daemon/pluginhost/

func BenchmarkToolCall(b *testing.B) {
	benchCalls(b, "test-echo", json.RawMessage(`{"text":"hi"}`))
}

// BenchmarkToolCallWithHostService: the tool makes one host-service call
// (a KV read) back into the host over the kept-open broker connection.
func BenchmarkToolCallWithHostService(b *testing.B) {
	benchCalls(b, "test-kv_get", json.RawMessage(`{"key":"k"}`))
}

func benchCalls(b *testing.B, tool string, args json.RawMessage) {
	e := startHost(b, []string{"test"}, nil, nil)
	call := tools.Call{User: alice, WorkflowID: "wf", InstanceID: "inst", StepID: "step", Tool: tool, Arguments: args}
	ctx := context.Background()
	one := func() time.Duration {
		start := time.Now()
		if _, err := e.h.Call(ctx, call); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for range 100 { // warm up
		one()
	}
	b.Run("sequential", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		start := time.Now()
		for range b.N {
			lat = append(lat, one())
		}
		report(b, lat, time.Since(start))
	})
	for _, callers := range []int{8, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			var mu sync.Mutex
			var lat []time.Duration
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					mine = append(mine, one())
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			report(b, lat, time.Since(start))
		})
	}
}

func report(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
}
