package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/sdk/pluginpb"
)

func (sp *streamPool) idleCount() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.idle)
}

// TestCallStreamReuse: an SDK plugin is called over pooled streams: one
// stream carries sequential calls, concurrent calls open at most one each,
// and they all go back to the pool for the next calls.
func TestCallStreamReuse(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, nil)
	p, _ := e.managed("test").current()
	if !p.desc.callStream {
		t.Fatal("the SDK plugin did not announce call_stream")
	}
	for i := range 20 {
		m := mustCall(t, e, alice, "test-echo", map[string]string{"text": itoa(i)})
		if m["text"] != itoa(i) || !contains(mustJSON(m["user"]), alice.String()) {
			t.Fatalf("call %d: %v", i, m)
		}
	}
	if n, idle := p.streams.opened.Load(), p.streams.idleCount(); n != 1 || idle != 1 {
		t.Fatalf("20 sequential calls opened %d streams (%d idle), want 1", n, idle)
	}

	const concurrent = 16
	var wg sync.WaitGroup
	errs := make(chan error, concurrent)
	for range concurrent {
		wg.Go(func() {
			if _, res, err := e.call(t, bob, "test-sleep", map[string]int{"ms": 100}); err != nil || res.IsError {
				errs <- fmt.Errorf("concurrent call: %s %v", res.Content, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	opened := p.streams.opened.Load()
	if opened < 2 || opened > concurrent+1 {
		t.Fatalf("%d concurrent calls: %d streams opened in all", concurrent, opened)
	}
	if idle := p.streams.idleCount(); idle != int(opened) {
		t.Fatalf("%d streams opened, %d idle: completed calls must return theirs", opened, idle)
	}
	for range 20 {
		mustCall(t, e, alice, "test-echo", nil)
	}
	if n := p.streams.opened.Load(); n != opened {
		t.Fatalf("sequential calls after a burst opened %d more streams", n-opened)
	}
}

// TestCallStreamAborted: a call that ends mid-call (its deadline, or the
// caller's cancellation) fails as it did over unary calls, the handler in
// the plugin sees its context end, and its stream is dropped rather than
// reused: the next call works, on a new stream.
func TestCallStreamAborted(t *testing.T) {
	cases := []struct {
		name        string
		callTimeout time.Duration
		cancelAfter time.Duration // 0: not cancelled
		want        error
		// saw is what the handler's context may say: with a deadline the
		// plugin's own copy of it may fire first; without one only the
		// host's cancellation of the stream can have ended it.
		saw []string
	}{
		{"deadline", 400 * time.Millisecond, 0, context.DeadlineExceeded, []string{"context deadline exceeded", "context canceled"}},
		{"cancelled", time.Minute, 200 * time.Millisecond, context.Canceled, []string{"context canceled"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := startHost(t, []string{"test"}, nil, func(c *Config) { c.CallTimeout = tc.callTimeout })
			p, _ := e.managed("test").current()
			mustCall(t, e, alice, "test-echo", nil) // one idle stream
			ctx := context.Background()
			if tc.cancelAfter > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				time.AfterFunc(tc.cancelAfter, cancel)
			}
			report := filepath.Join(t.TempDir(), "report")
			args, _ := json.Marshal(map[string]any{"ms": 20000, "report": report})
			start := time.Now()
			_, err := e.h.Call(ctx, tools.Call{User: alice, Tool: "test-sleep", Arguments: args})
			if !errors.Is(err, tc.want) || errors.Is(err, ErrUnavailable) || time.Since(start) > 3*time.Second {
				t.Fatalf("got %v after %s, want %v", err, time.Since(start), tc.want)
			}
			idle := p.streams.idleCount()
			var saw string
			waitUntil(t, "the handler to see its context end", func() bool {
				b, _ := os.ReadFile(report)
				saw = string(b)
				return saw != ""
			})
			if !slices.Contains(tc.saw, saw) {
				t.Errorf("the handler saw %q, want one of %q", saw, tc.saw)
			}
			// The host aborted the call (else the plugin's copy of the
			// deadline fired first and it answered, on a stream that may
			// serve again): its stream is dropped, the next call opens one.
			aborted := saw == "context canceled"
			if aborted && idle != 0 {
				t.Fatalf("the aborted call's stream went back to the pool (%d idle)", idle)
			}
			if m := mustCall(t, e, bob, "test-echo", map[string]string{"text": "next"}); m["text"] != "next" {
				t.Fatalf("next call: %v", m)
			}
			if n := p.streams.opened.Load(); aborted && n != 2 {
				t.Errorf("%d streams opened, want 2 (the aborted one dropped)", n)
			}
			if q, _ := e.managed("test").current(); q != p {
				t.Error("the plugin was restarted: an aborted call is not a crash")
			}
		})
	}
}

// TestUnaryWithoutCallStream: a plugin whose Describe does not announce
// call_stream (the rogue one speaks the raw protocol, CallTool only) is
// still called with unary CallTool.
func TestUnaryWithoutCallStream(t *testing.T) {
	e := startHost(t, []string{"rogue"}, nil, nil)
	p, _ := e.managed("rogue").current()
	if p.desc.callStream {
		t.Fatal("call_stream set for a plugin that did not announce it")
	}
	for range 3 {
		if _, res, err := e.call(t, alice, "rogue-replay", nil); err != nil || res.IsError {
			t.Fatalf("unary call: %s %v", res.Content, err)
		}
	}
	if n := p.streams.opened.Load(); n != 0 {
		t.Errorf("%d streams opened to a plugin without CallStream", n)
	}
}

// TestStreamPoolCap: at most maxIdleStreams idle streams are kept; others,
// and any returned after the process is gone, are closed.
func TestStreamPoolCap(t *testing.T) {
	sp := newStreamPool(nil)
	var mu sync.Mutex
	closed := 0
	stream := func() *callStream {
		return &callStream{cancel: func() { mu.Lock(); closed++; mu.Unlock() }}
	}
	for range maxIdleStreams + 6 {
		sp.put(stream())
	}
	if idle := sp.idleCount(); idle != maxIdleStreams || closed != 6 {
		t.Fatalf("%d idle, %d closed", idle, closed)
	}
	sp.close()
	sp.put(stream())
	if idle := sp.idleCount(); idle != 0 || closed != 7 || sp.take() != nil {
		t.Fatalf("after close: %d idle, %d closed", idle, closed)
	}
}

// fakeStreamPlugin serves CallStream per mode: "ok" answers every call
// with its tool name, "status" fails each with NotFound, "one" answers one
// call then ends the stream, "hangup" ends it without answering.
type fakeStreamPlugin struct {
	pluginpb.UnimplementedPluginServer
	mode string
}

func (f *fakeStreamPlugin) CallStream(s pluginpb.Plugin_CallStreamServer) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &pluginpb.StreamCallResponse{Content: []byte(`"` + req.GetTool() + `"`)}
		switch f.mode {
		case "hangup":
			return nil
		case "status":
			resp = &pluginpb.StreamCallResponse{Code: int32(codes.NotFound), Message: "no tool " + req.GetTool()}
		}
		if err := s.Send(resp); err != nil {
			return err
		}
		if f.mode == "one" {
			return nil
		}
	}
}

func fakeStreamPool(t *testing.T, mode string) *streamPool {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginpb.RegisterPluginServer(srv, &fakeStreamPlugin{mode: mode})
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	sp := newStreamPool(pluginpb.NewPluginClient(conn))
	t.Cleanup(func() { sp.close(); conn.Close(); srv.Stop() })
	return sp
}

// TestStreamPoolAnswers: what the plugin answers over a stream becomes what
// a unary CallTool would have returned, and only streams that still serve
// are reused.
func TestStreamPoolAnswers(t *testing.T) {
	ctx := context.Background()
	call := func(sp *streamPool, tool string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, err := sp.call(ctx, &pluginpb.StreamCallRequest{Tool: tool, UserId: "u"})
		return string(resp.GetContent()), err
	}

	t.Run("a failure is its status, the stream reused", func(t *testing.T) {
		sp := fakeStreamPool(t, "status")
		for range 2 {
			_, err := call(sp, "x")
			if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "no tool x" {
				t.Fatalf("got %v", err)
			}
		}
		if n := sp.opened.Load(); n != 1 {
			t.Errorf("%d streams opened", n)
		}
	})

	t.Run("a stream ended between calls is replaced", func(t *testing.T) {
		sp := fakeStreamPool(t, "one")
		for i, tool := range []string{"a", "b", "c"} {
			if got, err := call(sp, tool); err != nil || got != `"`+tool+`"` {
				t.Fatalf("call %d: %s %v", i, got, err)
			}
			time.Sleep(100 * time.Millisecond) // the stream's end reaches the host
		}
		if n := sp.opened.Load(); n != 3 {
			t.Errorf("%d streams opened, want 3", n)
		}
	})

	t.Run("a stream ended without an answer did not serve the call", func(t *testing.T) {
		sp := fakeStreamPool(t, "hangup")
		_, err := call(sp, "x")
		if status.Code(err) != codes.Unavailable || !contains(err.Error(), "without answering") {
			t.Fatalf("got %v", err)
		}
		if idle := sp.idleCount(); idle != 0 {
			t.Errorf("%d idle streams", idle)
		}
	})
}
