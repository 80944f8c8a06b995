package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// stableAfter is how long a plugin must run before its restart backoff
// resets (at once if it answered a call).
const stableAfter = time.Minute

// managed is one plugin and its supervisor: at most one process at a time.
type managed struct {
	h         *Host
	src       source
	first     chan struct{} // closed after the first start attempt
	firstOnce sync.Once
	kickc     chan struct{} // asks the supervisor to check the process now
	stop      context.CancelFunc
	done      chan struct{} // closed when the supervisor returned

	mu       sync.RWMutex
	state    State
	cur      *proc        // the running process; nil unless state is running
	desc     *description // the last description (kept while restarting)
	restarts int
	lastErr  error
	cb       circuit
	// cbSet is true while cb is not the zero circuit: calls to a healthy
	// plugin skip the lock.
	cbSet atomic.Bool
}

// circuit is the breaker of a plugin that keeps crashing. The crashes of a
// running process (it exited, or failed a health check) count while no
// call is answered between them; CircuitThreshold of them within
// CircuitWindow open it: calls fail fast and the plugin is not restarted
// until the cool-down ends. Then it is half-open: the plugin is started
// again and one call at a time goes through, as a probe. An answered call
// closes it; a crash (or a failed start) while half-open opens it again
// with twice the cool-down, up to CircuitMaxCooldown. Guarded by
// managed.mu.
type circuit struct {
	crashes   []time.Time   // the crashes in a row within the window, oldest first
	inARow    int           // crashes since the last answered call
	openUntil time.Time     // set while open
	cooldown  time.Duration // of the last opening
	halfOpen  bool
	probing   bool // the half-open probe call is in flight
}

// Circuit states, as Info shows them.
const (
	CircuitClosed   = "closed"
	CircuitOpen     = "open"
	CircuitHalfOpen = "half_open"
)

func newManaged(h *Host, src source) *managed {
	return &managed{h: h, src: src, first: make(chan struct{}), kickc: make(chan struct{}, 1), state: StateStarting, done: make(chan struct{})}
}

// description is what a plugin said of itself in Describe.
type description struct {
	name, version string
	tools         map[string]*pluginpb.Tool
	specs         []tools.Spec
	needs         map[sdk.Need]bool
	// callStream: the plugin serves CallStream (SDK plugins do); others
	// are called with unary CallTool.
	callStream bool
}

// proc is one running plugin process.
type proc struct {
	client *plugin.Client
	conn   *grpc.ClientConn
	rpc    pluginpb.PluginClient
	// streams are the idle call streams (used when desc.callStream).
	streams *streamPool
	done    <-chan struct{} // closed when the process has exited
	pid     int
	desc    *description
	// answered: the process served at least one call. A plugin that crashes
	// after serving calls (killed now and then) restarts without a grown
	// backoff; one that never answers is left to the circuit breaker.
	answered atomic.Bool
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (m *managed) current() (*proc, State) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cur, m.state
}

func (m *managed) knowsTool(tool string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.desc == nil {
		return true // never described: say it is unavailable rather than unknown
	}
	_, ok := m.desc.tools[tool]
	return ok
}

func (m *managed) kick() {
	select {
	case m.kickc <- struct{}{}:
	default:
	}
}

// unavailable is the fail-fast error of a call while the plugin is down.
func (m *managed) unavailable(st State) error {
	m.mu.RLock()
	last := m.lastErr
	m.mu.RUnlock()
	var msg string
	switch st {
	case StateRestarting:
		msg = fmt.Sprintf("pluginhost: plugin %q is restarting after a crash", m.src.name)
	case StateStopped:
		msg = fmt.Sprintf("pluginhost: plugin %q is stopped", m.src.name)
	case StateFailed:
		msg = fmt.Sprintf("pluginhost: plugin %q failed to start", m.src.name)
		if last != nil {
			msg += ": " + last.Error()
		}
	case StateCircuitOpen:
		m.mu.RLock()
		defer m.mu.RUnlock()
		return m.circuitErrorLocked()
	default:
		msg = fmt.Sprintf("pluginhost: plugin %q is starting", m.src.name)
	}
	return &unavailableError{msg: msg}
}

func (m *managed) info() Info {
	m.mu.RLock()
	defer m.mu.RUnlock()
	i := Info{Name: m.src.name, Source: m.src.desc, State: m.state, Restarts: m.restarts, Tools: []tools.Spec{}}
	if m.desc != nil {
		i.Version = m.desc.version
		i.Tools = append(i.Tools, m.desc.specs...)
		i.Needs = sortedNeeds(m.desc.needs)
	}
	if m.lastErr != nil {
		i.Error = m.lastErr.Error()
	}
	switch {
	case !m.cb.openUntil.IsZero():
		i.Circuit, i.CircuitOpenUntil = CircuitOpen, m.cb.openUntil
	case m.cb.halfOpen:
		i.Circuit = CircuitHalfOpen
	default:
		i.Circuit = CircuitClosed
	}
	return i
}

// circuitErrorLocked is the fail-fast error of a call while the circuit is
// open or its probe is in flight; m.mu must be held.
func (m *managed) circuitErrorLocked() error {
	msg := fmt.Sprintf("pluginhost: plugin %q is failing: circuit half-open, probing it with one call", m.src.name)
	if !m.cb.openUntil.IsZero() {
		msg = fmt.Sprintf("pluginhost: plugin %q is failing: circuit open until %s (%d crashes in a row",
			m.src.name, m.cb.openUntil.UTC().Format(time.RFC3339), m.cb.inARow)
		if m.lastErr != nil {
			msg += "; last: " + m.lastErr.Error()
		}
		msg += ")"
	}
	return &unavailableError{msg: msg, circuit: true}
}

// failed records a crash of the running process, or a failed start (which
// counts only while half-open), at now; it reports whether the circuit is
// open now, and until when.
func (m *managed) failed(now time.Time, startFailure bool) (time.Time, bool) {
	cfg := &m.h.cfg
	m.mu.Lock()
	defer m.mu.Unlock()
	cb := &m.cb
	if cfg.CircuitThreshold < 0 || (startFailure && !cb.halfOpen) {
		return time.Time{}, false
	}
	m.cbSet.Store(true)
	cb.inARow++
	cb.crashes = append(slices.DeleteFunc(cb.crashes, func(t time.Time) bool { return now.Sub(t) > cfg.CircuitWindow }), now)
	switch {
	case cb.halfOpen: // the probe failed
		cb.cooldown = min(2*cb.cooldown, cfg.CircuitMaxCooldown)
	case len(cb.crashes) >= cfg.CircuitThreshold:
		cb.cooldown = cfg.CircuitCooldown
	default:
		return time.Time{}, false
	}
	cb.crashes, cb.halfOpen, cb.probing = cb.crashes[:0], false, false
	cb.openUntil = now.Add(cb.cooldown)
	m.state = StateCircuitOpen
	m.h.metrics.circuitOpen.WithLabelValues(m.src.name).Set(1)
	return cb.openUntil, true
}

// waitCircuit waits until the open circuit's cool-down ends, then makes it
// half-open; it reports false when ctx ended first.
func (m *managed) waitCircuit(ctx context.Context, until time.Time) bool {
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
	}
	m.mu.Lock()
	m.cb.openUntil, m.cb.halfOpen = time.Time{}, true
	m.state = StateRestarting
	m.mu.Unlock()
	return true
}

// admit lets a call through to the running process: always while the
// circuit is closed, one at a time (the probe) while it is half-open.
func (m *managed) admit() (probe bool, err error) {
	if !m.cbSet.Load() {
		return false, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case !m.cb.openUntil.IsZero() || m.cb.probing:
		return false, m.circuitErrorLocked()
	case m.cb.halfOpen:
		m.cb.probing = true
		return true, nil
	}
	return false, nil
}

// callEnded records the end of an admitted call: one the plugin answered
// clears the crash count and closes a half-open circuit.
func (m *managed) callEnded(probe, answered bool) {
	if !probe && (!answered || !m.cbSet.Load()) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if probe {
		m.cb.probing = false
	}
	if !answered || !m.cb.openUntil.IsZero() {
		return
	}
	if m.cb.halfOpen {
		m.h.metrics.circuitOpen.WithLabelValues(m.src.name).Set(0)
		m.h.log.Info("plugin answered the probe call: circuit closed", "plugin", m.src.name)
	}
	m.cb = circuit{}
	m.cbSet.Store(false)
}

// supervise runs the plugin until ctx ends: start, watch, and after a
// crash or a failed health check restart with exponential backoff.
func (m *managed) supervise(ctx context.Context) {
	defer m.releaseFirst()
	log := m.h.log.With("plugin", m.src.name)
	backoff := m.h.cfg.MinBackoff
	for {
		p, err := m.launch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				m.setStopped()
				return
			}
			m.mu.Lock()
			m.lastErr = err
			if m.state == StateStarting {
				m.state = StateFailed
			}
			m.mu.Unlock()
			m.releaseFirst()
			if until, open := m.failed(time.Now(), true); open {
				log.Error("plugin failed to start after a cool-down: circuit open again", "error", err, "open_until", until)
				if !m.waitCircuit(ctx, until) {
					m.setStopped()
					return
				}
				continue
			}
			log.Error("plugin start failed", "error", err, "retry_in", backoff.String())
		} else {
			m.mu.Lock()
			m.cur, m.desc, m.state, m.lastErr = p, p.desc, StateRunning, nil
			m.mu.Unlock()
			m.releaseFirst()
			started := time.Now()
			reason := m.watch(ctx, p)
			m.mu.Lock()
			m.cur = nil
			if ctx.Err() == nil {
				m.state, m.lastErr = StateRestarting, reason
				m.restarts++
			}
			m.mu.Unlock()
			m.kill(p)
			if ctx.Err() != nil {
				m.setStopped()
				return
			}
			m.h.metrics.restarts.WithLabelValues(m.src.name).Inc()
			if time.Since(started) >= stableAfter || p.answered.Load() {
				backoff = m.h.cfg.MinBackoff
			}
			if until, open := m.failed(time.Now(), false); open {
				log.Error("plugin keeps crashing: circuit open, not restarting it until the cool-down ends",
					"error", reason, "pid", p.pid, "open_until", until)
				if !m.waitCircuit(ctx, until) {
					m.setStopped()
					return
				}
				log.Info("plugin circuit half-open: starting it again; the next call is a probe")
				backoff = m.h.cfg.MinBackoff
				continue
			}
			log.Error("plugin crashed; restarting", "error", reason, "pid", p.pid, "retry_in", backoff.String())
		}
		wait := backoff + rand.N(backoff/4+1) // jitter
		backoff = min(2*backoff, m.h.cfg.MaxBackoff)
		select {
		case <-ctx.Done():
			m.setStopped()
			return
		case <-time.After(wait):
		}
	}
}

func (m *managed) releaseFirst() { m.firstOnce.Do(func() { close(m.first) }) }

func (m *managed) setStopped() {
	m.mu.Lock()
	m.state, m.cur = StateStopped, nil
	m.mu.Unlock()
	m.h.metrics.circuitOpen.WithLabelValues(m.src.name).Set(0) // no plugin, no circuit
}

// watch returns why the process must be replaced: it exited, or failed a
// health check; or nil when ctx ends.
func (m *managed) watch(ctx context.Context, p *proc) error {
	tick := time.NewTicker(m.h.cfg.HealthInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.done:
			return errors.New("the plugin process exited")
		case <-m.kickc:
			// A call saw the connection fail: wait briefly for the exit to
			// be noticed, else check health.
			select {
			case <-p.done:
				return errors.New("the plugin process exited")
			case <-time.After(50 * time.Millisecond):
			}
			if err := m.ping(ctx, p); err != nil && ctx.Err() == nil {
				return err
			}
		case <-tick.C:
			if err := m.ping(ctx, p); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// ping is go-plugin's health check (the gRPC health service every plugin
// serves), with a deadline.
func (m *managed) ping(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := grpc_health_v1.NewHealthClient(p.conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: plugin.GRPCServiceName})
	if err != nil {
		return fmt.Errorf("health check failed: %w", err)
	}
	return nil
}

// kill stops the process (go-plugin Kill: graceful, then SIGKILL after 2 s)
// and then its whole process group, so that nothing it started survives.
func (m *managed) kill(p *proc) {
	p.streams.close() // ends its calls now, rather than when the connection goes
	p.client.Kill()
	if p.pid > 0 {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL) // the group; ESRCH when already empty
	}
}

// childEnv is the plugin's whole environment (go-plugin adds its handshake
// variables): the daemon's own environment may hold secrets (database URL,
// API keys) that are no business of a plugin.
func childEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ", "LANG", "LC_ALL", "GOCOVERDIR", "GOTRACEBACK"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// launch starts a process, opens its host-service broker connection and
// describes it.
func (m *managed) launch(ctx context.Context) (_ *proc, err error) {
	cmd := exec.Command(m.src.path, m.src.args...)
	cmd.Env = append(childEnv(), plugin.EnvUnixSocketDir+"="+m.h.sockDir)
	// Its own process group (killed whole on Close), and killed by the
	// kernel should the daemon die without closing it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logger := m.h.log.With("plugin", m.src.name)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  plugin.HandshakeConfig{MagicCookieKey: sdk.MagicCookieKey, MagicCookieValue: sdk.MagicCookieValue},
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: {sdk.PluginSetName: &clientPlugin{}}},
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newHCLogger(m.h.log, m.src.name),
		SyncStdout:       &lineWriter{l: logger, msg: "plugin output", stream: "stdout"},
		SyncStderr:       &lineWriter{l: logger, msg: "plugin output", stream: "stderr"},
		StartTimeout:     m.h.cfg.StartTimeout,
	})
	defer func() {
		if err != nil {
			client.Kill()
			if cmd.Process != nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		}
	}()
	rpcClient, err := client.Client()
	if err != nil {
		return nil, fmt.Errorf("pluginhost: start %s: %w", m.src.desc, err)
	}
	raw, err := rpcClient.Dispense(sdk.PluginSetName)
	if err != nil {
		return nil, fmt.Errorf("pluginhost: start %s: %w", m.src.desc, err)
	}
	d := raw.(*dispensed)
	rpc := pluginpb.NewPluginClient(d.conn)
	p := &proc{client: client, conn: d.conn, rpc: rpc, streams: newStreamPool(rpc), done: d.done}
	if rc := client.ReattachConfig(); rc != nil {
		p.pid = rc.Pid
	}

	// The host services: one broker server for the life of the process;
	// the plugin dials it once, while answering Describe.
	svc := &hostService{h: m.h, plugin: m.src.name, log: logger}
	brokerID := d.broker.NextId()
	go d.broker.AcceptAndServe(brokerID, svc.newServer)

	dctx, cancel := context.WithTimeout(ctx, m.h.cfg.StartTimeout)
	defer cancel()
	resp, err := p.rpc.Describe(dctx, &pluginpb.DescribeRequest{HostBrokerId: brokerID})
	if err != nil {
		return nil, fmt.Errorf("pluginhost: describe %s: %w", m.src.desc, err)
	}
	desc, err := describe(m.src.name, resp)
	if err != nil {
		return nil, fmt.Errorf("pluginhost: %s: %w", m.src.desc, err)
	}
	p.desc = desc
	svc.needs.Store(&desc.needs) // before any call can reach the services
	return p, nil
}

// describe validates a Describe answer.
func describe(name string, r *pluginpb.DescribeResponse) (*description, error) {
	if r.GetName() != name {
		return nil, fmt.Errorf("the plugin calls itself %q, expected %q (a plugin file must be named after its plugin)", r.GetName(), name)
	}
	sp := sdk.Plugin{Name: name}
	for _, t := range r.GetTools() {
		sp.Tools = append(sp.Tools, sdk.Tool{Name: t.GetName(), InputSchema: t.GetInputSchema(), Handler: func(context.Context, sdk.Call) (sdk.Result, error) { return sdk.Result{}, nil }})
	}
	for _, n := range r.GetNeeds() {
		sp.Needs = append(sp.Needs, sdk.Need(n))
	}
	if err := sp.Validate(); err != nil {
		return nil, err
	}
	d := &description{name: name, version: r.GetVersion(), tools: map[string]*pluginpb.Tool{}, needs: map[sdk.Need]bool{}, callStream: r.GetCallStream()}
	for _, t := range r.GetTools() {
		d.tools[t.GetName()] = t
		schema := t.GetInputSchema()
		if len(schema) == 0 {
			schema = []byte(`{"type":"object"}`)
		}
		d.specs = append(d.specs, tools.Spec{Name: name + "-" + t.GetName(), Description: t.GetDescription(), InputSchema: schema})
	}
	for _, n := range sp.Needs {
		d.needs[n] = true
	}
	return d, nil
}

// clientPlugin is the host side of the go-plugin plugin set.
type clientPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

// dispensed is what Dispense returns: the connection, the broker, and a
// channel closed when the process exits (go-plugin cancels ctx then).
type dispensed struct {
	conn   *grpc.ClientConn
	broker *plugin.GRPCBroker
	done   <-chan struct{}
}

func (clientPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("pluginhost: the host serves no plugin")
}

func (clientPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &dispensed{conn: conn, broker: broker, done: ctx.Done()}, nil
}
