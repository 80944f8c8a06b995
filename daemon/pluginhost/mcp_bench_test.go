package pluginhost

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/inboxd/inboxd/daemon/userid"
)

// BenchmarkMCPToolCall is the comparison point for BenchmarkToolCall: the
// same trivial echo tool served over MCP streamable HTTP with the official Go
// SDK (the transport the original system used), on a loopback httptest
// server, called with the SDK client. User context travels as the original
// did: X-User-ID (and workflow/instance/step) headers set by the client's
// HTTP transport from the call's context, read and parsed by the tool
// handler from the request's Extra.Header.
//
// Setups (see contrib/bench/plugins.md for figures):
//   - default: SDK defaults (stateful session, SSE responses, standalone
//     SSE stream) over an http.Transport with the default pool of 2 idle
//     conns per host;
//   - best: a pool of 128 idle conns per host, JSON responses instead of SSE
//     and no standalone SSE stream; stateful (see stateless);
//   - best/session-per-caller: best with one client session per caller
//     goroutine instead of one session shared by all callers;
//   - best/nouser: best without the user headers (the cost of user context);
//   - best+stateless: best with a stateless server, which builds a
//     temporary server session per request and is slower, so it is not best.
//
// Run: go test -run '^$' -bench 'ToolCall' -benchtime 3000x ./daemon/pluginhost/
func BenchmarkMCPToolCall(b *testing.B) {
	for _, s := range []mcpSetup{
		{name: "default", user: true},
		{name: "best", pool: true, json: true, user: true},
		{name: "best/session-per-caller", pool: true, json: true, user: true, perCaller: true},
		{name: "best/nouser", pool: true, json: true},
		{name: "best+stateless", pool: true, json: true, stateless: true, user: true},
	} {
		b.Run(s.name, func(b *testing.B) { benchMCP(b, s) })
	}
}

// mcpSetup is one MCP client/server configuration.
type mcpSetup struct {
	name      string
	pool      bool // client: MaxIdleConnsPerHost 128 (default 2)
	json      bool // server: JSONResponse instead of SSE; client: no standalone SSE stream
	stateless bool // server: Stateless
	user      bool // user context headers sent and read
	perCaller bool // one client session per caller goroutine (else one shared)
}

type mcpEchoIn struct {
	Text string `json:"text"`
}

type mcpUserKey struct{}

// mcpUser is the user context sent with each call.
type mcpUser struct{ user, workflow, instance, step string }

// userHeaders sets the user context of the call (from the request's
// context) as headers, as the original's tool clients did.
type userHeaders struct{ next http.RoundTripper }

func (t userHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	if u, ok := r.Context().Value(mcpUserKey{}).(mcpUser); ok {
		r = r.Clone(r.Context())
		r.Header.Set("X-User-ID", u.user)
		r.Header.Set("X-Workflow-ID", u.workflow)
		r.Header.Set("X-Instance-ID", u.instance)
		r.Header.Set("X-Step-ID", u.step)
	}
	return t.next.RoundTrip(r)
}

func newMCPServer(b *testing.B, s mcpSetup) *httptest.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "test", Version: "bench"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "echoes text with the caller"},
		func(ctx context.Context, req *mcp.CallToolRequest, in mcpEchoIn) (*mcp.CallToolResult, any, error) {
			out := map[string]any{"text": in.Text}
			if s.user {
				h := req.Extra.Header
				u, err := userid.Parse(h.Get("X-User-ID"))
				if err != nil {
					return nil, nil, fmt.Errorf("no user: %v", err)
				}
				out["user"] = map[string]string{"user_id": u.String(), "workflow_id": h.Get("X-Workflow-ID"),
					"instance_id": h.Get("X-Instance-ID"), "step_id": h.Get("X-Step-ID")}
			}
			js, err := json.Marshal(out)
			if err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(js)}}}, nil, nil
		})
	opts := &mcp.StreamableHTTPOptions{Stateless: s.stateless, JSONResponse: s.json}
	ts := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, opts))
	b.Cleanup(ts.Close)
	return ts
}

func newMCPSession(b *testing.B, url string, s mcpSetup) *mcp.ClientSession {
	tr := http.DefaultTransport.(*http.Transport).Clone() // default: 2 idle conns per host
	if s.pool {
		tr.MaxIdleConns = 256
		tr.MaxIdleConnsPerHost = 128
	}
	b.Cleanup(tr.CloseIdleConnections)
	t := &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: userHeaders{tr}},
		DisableStandaloneSSE: s.json}
	c := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "bench"}, nil)
	cs, err := c.Connect(context.Background(), t, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cs.Close() })
	return cs
}

func benchMCP(b *testing.B, s mcpSetup) {
	ts := newMCPServer(b, s)
	shared := newMCPSession(b, ts.URL, s)
	user := s.user
	ctx := context.Background()
	if user {
		ctx = context.WithValue(ctx, mcpUserKey{}, mcpUser{alice.String(), "wf", "inst", "step"})
	}
	params := &mcp.CallToolParams{Name: "echo", Arguments: json.RawMessage(`{"text":"hi"}`)}
	one := func(cs *mcp.ClientSession) time.Duration {
		start := time.Now()
		res, err := cs.CallTool(ctx, params)
		if err != nil {
			b.Fatal(err)
		}
		if res.IsError {
			b.Fatalf("tool error: %v", res.Content)
		}
		return time.Since(start)
	}
	// Check once that the user made it through.
	res, err := shared.CallTool(ctx, params)
	if err != nil {
		b.Fatal(err)
	}
	if got := res.Content[0].(*mcp.TextContent).Text; user != contains(got, alice.String()) {
		b.Fatalf("user context: %s", got)
	}
	for range 100 { // warm up
		one(shared)
	}
	b.Run("sequential", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		start := time.Now()
		for range b.N {
			lat = append(lat, one(shared))
		}
		report(b, lat, time.Since(start))
	})
	for _, callers := range []int{8, 32} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			par := (callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
			sessions := make(chan *mcp.ClientSession, par*runtime.GOMAXPROCS(0))
			for range cap(sessions) {
				if s.perCaller {
					sessions <- newMCPSession(b, ts.URL, s)
				} else {
					sessions <- shared
				}
			}
			b.SetParallelism(par)
			var mu sync.Mutex
			var lat []time.Duration
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				cs := <-sessions
				var mine []time.Duration
				for pb.Next() {
					mine = append(mine, one(cs))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			report(b, lat, time.Since(start))
		})
	}
}
