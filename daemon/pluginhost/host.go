// Package pluginhost owns the client side of inboxd's tool plugins: it
// discovers them (every executable file in the plugin directory, plus the
// first-party plugins built into the inboxd binary, started as
// `inboxd plugin serve NAME`), starts them over hashicorp/go-plugin (gRPC),
// describes their tools, health-checks them, restarts a crashed plugin with
// exponential backoff, and stops them all (no orphans) on Close.
//
// Host implements tools.Caller: every call gets a deadline, the user
// context, and a capability token minted for that call. Calls to SDK
// plugins travel over a pool of long-lived CallStream streams per plugin
// process, one call at a time each (callstream.go); plugins that do not
// serve CallStream get unary CallTool calls with the context in gRPC
// metadata.
// The host services a plugin reaches back through (settings, its own KV,
// vector search and upsert, LLM completion, tone profile) are served over
// the go-plugin GRPCBroker, one connection per plugin process, and
// authorise every request by that token alone: the user is the token's, so
// a plugin cannot reach another user's data by naming another user.
// Secrets go only to plugins that declared the need for them.
package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// Defaults of Config.
const (
	DefaultCallTimeout    = 60 * time.Second
	DefaultStartTimeout   = 15 * time.Second
	DefaultHealthInterval = 15 * time.Second
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 60 * time.Second

	DefaultCircuitThreshold   = 5
	DefaultCircuitWindow      = 10 * time.Minute
	DefaultCircuitCooldown    = time.Minute
	DefaultCircuitMaxCooldown = 15 * time.Minute
)

// SettingsSource reads a user's settings (settings.Store).
type SettingsSource interface {
	Get(ctx context.Context, user userid.ID) (settings.Settings, error)
}

// HostServices are the daemon's stores and clients behind the host
// services. A nil member makes its services answer Unavailable.
type HostServices struct {
	Settings SettingsSource
	KV       kv.Store
	Vectors  vectors.Store
	// Embedder returns the user's embedder (for VectorSearch queries and
	// VectorUpsert documents). For VectorUpsert it must name its catalog
	// model (Model() embed.Model, as *embed.Client does): the collection is
	// created for, and checked against, that model.
	Embedder func(ctx context.Context, user userid.ID) (embed.Embedder, error)
	LLM      llm.Client
	// LLMEndpoint returns the user's LLM endpoint and model; nil means the
	// user's settings (llm_base_url, llm_api_key, llm_model).
	LLMEndpoint func(ctx context.Context, user userid.ID) (llm.Endpoint, string, error)
}

// Config configures a Host.
type Config struct {
	// Dir is the plugin directory: every executable regular file in it is
	// a plugin whose name is the file name. "" or a missing directory
	// means none.
	Dir string
	// BuiltIn names the first-party plugins served by the inboxd binary
	// itself (re-executed as `inboxd plugin serve NAME`).
	BuiltIn []string
	// Only, when set, limits the plugins started to these names (for
	// `inboxd plugin describe NAME`).
	Only []string
	// CallTimeout bounds every call (default 60 s); a caller's earlier
	// deadline wins.
	CallTimeout time.Duration
	// StartTimeout bounds a plugin's start-up and Describe (default 15 s).
	StartTimeout time.Duration
	// HealthInterval is how often a running plugin is pinged (default 15 s).
	HealthInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before restarting a crashed
	// plugin; it doubles per crash and resets after a minute of health
	// (defaults 500 ms and 60 s).
	MinBackoff, MaxBackoff time.Duration
	// CircuitThreshold crashes in a row (no call answered between them)
	// within CircuitWindow open a plugin's circuit: its calls fail fast
	// with ErrCircuitOpen and it is not restarted for CircuitCooldown. Then
	// it is started again and the next call is a probe: an answer closes
	// the circuit, a crash opens it again for twice as long, up to
	// CircuitMaxCooldown. Defaults 5, 10 min, 1 min, 15 min; a negative
	// threshold turns the breaker off.
	CircuitThreshold                                   int
	CircuitWindow, CircuitCooldown, CircuitMaxCooldown time.Duration
	Logger                                             *slog.Logger
	// Registerer takes the plugin metrics; nil means not registered.
	Registerer prometheus.Registerer
	Services   HostServices
}

// Host runs the plugins. It is safe for concurrent use.
type Host struct {
	cfg     Config
	log     *slog.Logger
	metrics *hostMetrics
	tokens  *minter
	exe     string // the inboxd binary, for built-in plugins

	rescanMu sync.Mutex // one Rescan at a time

	mu      sync.RWMutex
	plugins map[string]*managed
	started bool
	runCtx  context.Context // the plugins' lifetime: ended by Close
	stop    context.CancelFunc
	wg      sync.WaitGroup
	// sockDir holds the plugins' gRPC sockets (go-plugin's
	// PLUGIN_UNIX_SOCKET_DIR). A plugin that is killed cannot remove its
	// socket; in a directory of the host's own, Close removes them all,
	// instead of leaving one in $TMPDIR per crash or restart.
	sockDir string
}

var _ tools.Caller = (*Host)(nil)

// New validates cfg and returns a Host; Start launches the plugins.
func New(cfg Config) (*Host, error) {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.CallTimeout, DefaultCallTimeout}, {&cfg.StartTimeout, DefaultStartTimeout},
		{&cfg.HealthInterval, DefaultHealthInterval}, {&cfg.MinBackoff, DefaultMinBackoff},
		{&cfg.MaxBackoff, DefaultMaxBackoff}, {&cfg.CircuitWindow, DefaultCircuitWindow},
		{&cfg.CircuitCooldown, DefaultCircuitCooldown}, {&cfg.CircuitMaxCooldown, DefaultCircuitMaxCooldown},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	cfg.CircuitMaxCooldown = max(cfg.CircuitMaxCooldown, cfg.CircuitCooldown)
	if cfg.CircuitThreshold == 0 {
		cfg.CircuitThreshold = DefaultCircuitThreshold
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for _, name := range cfg.BuiltIn {
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("pluginhost: built-in plugin: %w", err)
		}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("pluginhost: metrics: %w", err)
	}
	h := &Host{cfg: cfg, log: cfg.Logger, metrics: m, tokens: newMinter(), plugins: map[string]*managed{}}
	if len(cfg.BuiltIn) > 0 {
		if h.exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("pluginhost: locate the inboxd binary for built-in plugins: %w", err)
		}
	}
	return h, nil
}

// checkName applies the SDK's rule for plugin names.
func checkName(name string) error {
	return sdk.Plugin{Name: name}.Validate()
}

// Start discovers and launches every plugin and waits until each has been
// described or has failed its first start (which is logged, shown by
// Plugins, and retried with backoff). It fails only when the plugin
// directory cannot be read or ctx ends. Call it once.
func (h *Host) Start(ctx context.Context) error {
	srcs, err := h.discover()
	if err != nil {
		return err
	}
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		return errors.New("pluginhost: Start called twice")
	}
	sockDir, err := os.MkdirTemp("", "inboxd-plugins-")
	if err != nil {
		h.mu.Unlock()
		return fmt.Errorf("pluginhost: directory for plugin sockets: %w", err)
	}
	h.started, h.sockDir = true, sockDir
	runCtx, stop := context.WithCancel(context.Background())
	h.runCtx, h.stop = runCtx, stop
	var added []*managed
	for _, src := range srcs {
		added = append(added, h.launchLocked(src))
	}
	h.mu.Unlock()
	return h.awaitFirst(ctx, added)
}

// launchLocked starts supervising a plugin; h.mu must be held.
func (h *Host) launchLocked(src source) *managed {
	m := newManaged(h, src)
	pctx, stop := context.WithCancel(h.runCtx)
	m.stop = stop
	h.plugins[src.name] = m
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer close(m.done)
		m.supervise(pctx)
	}()
	return m
}

// awaitFirst waits until each plugin was described or failed its first
// start, then logs how each went.
func (h *Host) awaitFirst(ctx context.Context, ms []*managed) error {
	for _, m := range ms {
		select {
		case <-m.first:
		case <-ctx.Done():
			return fmt.Errorf("pluginhost: start: %w", ctx.Err())
		}
	}
	for _, m := range ms {
		info := m.info()
		names := make([]string, len(info.Tools))
		for i, t := range info.Tools {
			names[i] = t.Name
		}
		h.metrics.known(info.Name, names)
		if info.State == StateRunning {
			h.log.Info("plugin started", "plugin", info.Name, "version", info.Version, "source", info.Source, "tools", names, "needs", info.Needs)
		} else {
			h.log.Error("plugin failed to start; retrying with backoff", "plugin", info.Name, "source", info.Source, "error", info.Error)
		}
	}
	return nil
}

// Rescan makes the running plugins match the built-ins and the plugin
// directory dir (which may have changed: SIGHUP): new plugins are started,
// plugins whose file is gone or changed are stopped (and started again from
// the new file). Calls to a stopped plugin's tools fail as unknown tools.
func (h *Host) Rescan(ctx context.Context, dir string) error {
	h.rescanMu.Lock()
	defer h.rescanMu.Unlock()
	h.mu.Lock()
	if !h.started || h.runCtx.Err() != nil {
		h.mu.Unlock()
		return errors.New("pluginhost: Rescan before Start or after Close")
	}
	h.cfg.Dir = dir
	h.mu.Unlock()
	srcs, err := h.discover()
	if err != nil {
		return err
	}
	want := map[string]source{}
	for _, s := range srcs {
		want[s.name] = s
	}
	h.mu.Lock()
	var removed, added []*managed
	for name, m := range h.plugins {
		if s, ok := want[name]; !ok || s.path != m.src.path || !slices.Equal(s.args, m.src.args) {
			removed = append(removed, m)
			delete(h.plugins, name)
		}
	}
	for name, s := range want {
		if _, ok := h.plugins[name]; !ok {
			added = append(added, h.launchLocked(s))
		}
	}
	h.mu.Unlock()
	for _, m := range removed {
		m.stop()
		<-m.done
		h.log.Info("plugin stopped: no longer in the plugin set", "plugin", m.src.name, "source", m.src.desc)
	}
	return h.awaitFirst(ctx, added)
}

// source is where a plugin comes from.
type source struct {
	name string   // the plugin's name: the file name, or the built-in's name
	path string   // the executable
	args []string // its arguments
	desc string   // for logs and Info: the file, or "builtin"
}

// discover lists the built-in plugins and the plugin directory (less
// those Only leaves out).
func (h *Host) discover() ([]source, error) {
	srcs, err := h.discoverAll()
	if err != nil || len(h.cfg.Only) == 0 {
		return srcs, err
	}
	return slices.DeleteFunc(srcs, func(s source) bool { return !slices.Contains(h.cfg.Only, s.name) }), nil
}

func (h *Host) discoverAll() ([]source, error) {
	var srcs []source
	seen := map[string]bool{}
	for _, name := range h.cfg.BuiltIn {
		if seen[name] {
			continue
		}
		seen[name] = true
		srcs = append(srcs, source{name: name, path: h.exe, args: []string{"plugin", "serve", name}, desc: "builtin"})
	}
	if h.cfg.Dir == "" {
		return srcs, nil
	}
	entries, err := os.ReadDir(h.cfg.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return srcs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pluginhost: read plugin directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(h.cfg.Dir, name)
		fi, err := os.Stat(path) // follows symlinks
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		if err := checkName(name); err != nil {
			h.log.Error("plugin file skipped: its name is not a plugin name", "file", path, "error", err)
			continue
		}
		if seen[name] {
			h.log.Error("plugin file skipped: a plugin of that name exists", "file", path, "plugin", name)
			continue
		}
		seen[name] = true
		srcs = append(srcs, source{name: name, path: path, desc: path})
	}
	return srcs, nil
}

// Close stops every plugin and waits until their processes are gone. It
// is idempotent.
func (h *Host) Close() {
	h.mu.Lock()
	stop := h.stop
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
	h.wg.Wait()
	h.mu.RLock()
	sockDir := h.sockDir
	h.mu.RUnlock()
	if sockDir != "" {
		if err := os.RemoveAll(sockDir); err != nil {
			h.log.Warn("pluginhost: remove the plugin socket directory", "dir", sockDir, "err", err)
		}
	}
}

// State of a plugin.
type State string

// States of a plugin.
const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRestarting State = "restarting" // crashed, waiting to restart
	StateFailed     State = "failed"     // has never started; retrying
	StateStopped    State = "stopped"
	// StateCircuitOpen: crashed too often in a row; not restarted until
	// the circuit's cool-down ends (Info.CircuitOpenUntil).
	StateCircuitOpen State = "circuit_open"
)

// Info describes a plugin for the CLI and the API.
type Info struct {
	Name    string       `json:"name"`
	Version string       `json:"version"`
	Source  string       `json:"source"` // "builtin" or the file
	State   State        `json:"state"`
	Tools   []tools.Spec `json:"tools"` // named "{plugin}-{tool}"
	Needs   []string     `json:"needs,omitempty"`
	// Restarts counts restarts after crashes since Start.
	Restarts int `json:"restarts"`
	// Error is the last start or crash error, if any.
	Error string `json:"error,omitempty"`
	// Circuit is the crash breaker's state: closed, open (calls fail
	// fast until CircuitOpenUntil) or half_open (the next call is a probe).
	Circuit          string    `json:"circuit"`
	CircuitOpenUntil time.Time `json:"circuit_open_until,omitzero"`
}

// Plugins describes every plugin, by name.
func (h *Host) Plugins() []Info {
	h.mu.RLock()
	ms := make([]*managed, 0, len(h.plugins))
	for _, m := range h.plugins {
		ms = append(ms, m)
	}
	h.mu.RUnlock()
	out := make([]Info, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tools lists the tools of every plugin that has been described (also
// while one restarts: its calls then fail fast), by name.
func (h *Host) Tools(_ context.Context, user userid.ID) ([]tools.Spec, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	var out []tools.Spec
	for _, info := range h.Plugins() {
		out = append(out, info.Tools...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ErrUnavailable is wrapped by the errors of calls to a plugin that is not
// running (starting, restarting after a crash, stopped, its circuit open)
// or that went away during the call.
var ErrUnavailable = errors.New("pluginhost: plugin unavailable")

// ErrCircuitOpen is wrapped (with ErrUnavailable) by the errors of calls
// refused because the plugin's circuit is open, or half-open with its
// probe call in flight.
var ErrCircuitOpen = errors.New("pluginhost: plugin circuit open")

// unavailableError is a call refused because the plugin is not running.
type unavailableError struct {
	msg     string
	circuit bool // refused by the circuit breaker
}

func (e *unavailableError) Error() string { return e.msg }
func (e *unavailableError) Is(target error) bool {
	return target == ErrUnavailable || (e.circuit && target == ErrCircuitOpen)
}

// Call runs one tool as call.User: it mints the call's capability token,
// sends the user context, bounds the call by CallTimeout, and records
// metrics. A tool's IsError answer is a Result; everything else that goes
// wrong (unknown tool, plugin down or crashing, deadline, handler error)
// is an error.
func (h *Host) Call(ctx context.Context, call tools.Call) (tools.Result, error) {
	if err := call.User.Check(); err != nil {
		return tools.Result{}, err
	}
	pname, tname, err := tools.SplitName(call.Tool)
	if err != nil {
		return tools.Result{}, fmt.Errorf("%w: %s", tools.ErrUnknownTool, call.Tool)
	}
	h.mu.RLock()
	m := h.plugins[pname]
	h.mu.RUnlock()
	if m == nil {
		return tools.Result{}, fmt.Errorf("%w: %s", tools.ErrUnknownTool, call.Tool)
	}
	p, st := m.current()
	if p == nil {
		if !m.knowsTool(tname) {
			return tools.Result{}, fmt.Errorf("%w: %s", tools.ErrUnknownTool, call.Tool)
		}
		h.metrics.calls.WithLabelValues(pname, tname, resultUnavailable).Inc()
		return tools.Result{}, m.unavailable(st)
	}
	if _, ok := p.desc.tools[tname]; !ok {
		return tools.Result{}, fmt.Errorf("%w: %s", tools.ErrUnknownTool, call.Tool)
	}
	args := call.Arguments
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	if !isJSONObject(args) {
		h.metrics.calls.WithLabelValues(pname, tname, resultError).Inc()
		return tools.Result{}, fmt.Errorf("pluginhost: %s: the arguments are not a JSON object", call.Tool)
	}

	probe, err := m.admit()
	if err != nil {
		h.metrics.calls.WithLabelValues(pname, tname, resultUnavailable).Inc()
		return tools.Result{}, err
	}

	start := time.Now()
	deadline := start.Add(h.cfg.CallTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	token, revoke := h.tokens.mint(call.User, call.InstanceID, pname, deadline)
	defer revoke()
	content, isError, err := invoke(ctx, p, call, tname, args, token)
	h.metrics.duration.WithLabelValues(pname).Observe(time.Since(start).Seconds())
	// Answered: a result, or an error the tool's handler returned (the
	// SDK sends it as Unknown); the process served the call.
	answered := err == nil || status.Code(err) == codes.Unknown
	if answered {
		p.answered.Store(true)
	}
	m.callEnded(probe, answered)
	if err != nil {
		result, cerr := h.callError(ctx, deadline, m, p, call.Tool, err)
		h.metrics.calls.WithLabelValues(pname, tname, result).Inc()
		return tools.Result{}, cerr
	}
	if !json.Valid(content) {
		h.metrics.calls.WithLabelValues(pname, tname, resultError).Inc()
		return tools.Result{}, fmt.Errorf("pluginhost: %s: the plugin answered content that is not JSON", call.Tool)
	}
	result := resultOK
	if isError {
		result = resultToolError
	}
	h.metrics.calls.WithLabelValues(pname, tname, result).Inc()
	return tools.Result{Content: content, IsError: isError}, nil
}

// invoke sends one call to the process, over a pooled stream when the
// plugin serves CallStream, else as a unary CallTool with the user context
// and token in metadata. Either way a failure is the status error CallTool
// would have returned, so that Call treats both alike.
func invoke(ctx context.Context, p *proc, call tools.Call, tool string, args json.RawMessage, token string) (json.RawMessage, bool, error) {
	if p.desc.callStream {
		resp, err := p.streams.call(ctx, &pluginpb.StreamCallRequest{
			Tool: tool, Arguments: args,
			UserId: call.User.String(), WorkflowId: call.WorkflowID, InstanceId: call.InstanceID, StepId: call.StepID,
			Capability: token,
		})
		return resp.GetContent(), resp.GetIsError(), err
	}
	ctx = metadata.NewOutgoingContext(ctx, metadata.MD{
		sdk.MetadataUserID:     {call.User.String()},
		sdk.MetadataWorkflowID: {call.WorkflowID},
		sdk.MetadataInstanceID: {call.InstanceID},
		sdk.MetadataStepID:     {call.StepID},
		sdk.MetadataCapability: {token},
	})
	resp, err := p.rpc.CallTool(ctx, &pluginpb.CallToolRequest{Tool: tool, Arguments: args})
	return resp.GetContent(), resp.GetIsError(), err
}

// callError turns a failed call (CallTool, or a call over a stream) into
// the caller's error and its metric result.
func (h *Host) callError(ctx context.Context, deadline time.Time, m *managed, p *proc, tool string, err error) (string, error) {
	st, _ := status.FromError(err)
	// The plugin's copy of the deadline may fire a moment before ours and
	// reset the stream: that is the deadline too.
	deadlineHit := errors.Is(ctx.Err(), context.DeadlineExceeded) || st.Code() == codes.DeadlineExceeded ||
		(ctx.Err() == nil && time.Until(deadline) < 20*time.Millisecond)
	switch {
	case deadlineHit:
		return resultError, fmt.Errorf("pluginhost: %s: no answer before the call's deadline: %w", tool, context.DeadlineExceeded)
	case ctx.Err() != nil:
		return resultError, fmt.Errorf("pluginhost: %s: %w", tool, ctx.Err())
	case st.Code() == codes.Unavailable || st.Code() == codes.Canceled || p.exited():
		m.kick() // have the supervisor look now
		return resultUnavailable, &unavailableError{msg: fmt.Sprintf(
			"pluginhost: %s: plugin %q crashed or went away during the call (%s); it will be restarted", tool, m.src.name, st.Message())}
	default:
		return resultError, fmt.Errorf("pluginhost: %s: %s", tool, st.Message())
	}
}

// isJSONObject reports whether b is one JSON object. Valid JSON is one
// value, an object exactly when it starts with '{' (checked without
// decoding: this runs on every call).
func isJSONObject(b []byte) bool {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i < len(b) && b[i] == '{' && json.Valid(b)
}

// sortedNeeds returns the needs as strings, sorted.
func sortedNeeds(needs map[sdk.Need]bool) []string {
	out := make([]string, 0, len(needs))
	for n := range needs {
		out = append(out, string(n))
	}
	slices.Sort(out)
	return out
}
