package pluginhost

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// maxIdleStreams caps the idle call streams kept per process: a burst of
// more concurrent calls opens more, and closes the extra ones after use.
const maxIdleStreams = 64

// streamPool holds the idle CallStream streams of one process. A call
// takes one (or opens one), sends its request, reads its answer, and puts
// the stream back: on an open stream a call costs two messages, where a
// unary CallTool costs a new HTTP/2 stream with its headers and a new
// goroutine in the plugin.
type streamPool struct {
	rpc pluginpb.PluginClient
	// ctx is the process's life: kill cancels it, which ends every stream,
	// idle or in a call.
	ctx  context.Context
	stop context.CancelFunc

	mu   sync.Mutex
	idle []*callStream
	// opened counts the streams opened (the tests check reuse with it).
	opened atomic.Int64
}

// callStream is one open stream; cancel ends it.
type callStream struct {
	s      pluginpb.Plugin_CallStreamClient
	cancel context.CancelFunc
}

func newStreamPool(rpc pluginpb.PluginClient) *streamPool {
	ctx, stop := context.WithCancel(context.Background())
	return &streamPool{rpc: rpc, ctx: ctx, stop: stop}
}

// close ends every stream of the process; later calls fail.
func (sp *streamPool) close() {
	sp.stop()
	sp.mu.Lock()
	sp.idle = nil
	sp.mu.Unlock()
}

// take returns an idle stream, or nil.
func (sp *streamPool) take() *callStream {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	n := len(sp.idle)
	if n == 0 {
		return nil
	}
	cs := sp.idle[n-1]
	sp.idle[n-1] = nil
	sp.idle = sp.idle[:n-1]
	return cs
}

// open opens a stream for the call of ctx.
func (sp *streamPool) open(ctx context.Context) (*callStream, error) {
	// The stream outlives the call that opens it, so its context is the
	// process's; but opening waits while the connection is being
	// re-established, which must not outlast the call.
	sctx, cancel := context.WithCancel(sp.ctx)
	stop := context.AfterFunc(ctx, cancel)
	s, err := sp.rpc.CallStream(sctx)
	if !stop() && err == nil {
		err = status.FromContextError(ctx.Err()).Err()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	sp.opened.Add(1)
	return &callStream{s: s, cancel: cancel}, nil
}

// put returns a stream whose call completed to the pool, or closes it when
// the pool is full or the process is gone.
func (sp *streamPool) put(cs *callStream) {
	sp.mu.Lock()
	if len(sp.idle) < maxIdleStreams && sp.ctx.Err() == nil {
		sp.idle = append(sp.idle, cs)
		sp.mu.Unlock()
		return
	}
	sp.mu.Unlock()
	cs.cancel()
}

// call runs one call over a pooled stream. Its error is what a unary
// CallTool would have failed with: the plugin's answer as a status error
// (codes.Unknown for a handler error), or the transport's. The call is
// bounded by ctx: when ctx ends first, the stream is cancelled (which
// cancels the handler's context in the plugin) and never reused, and the
// error is the stream's Canceled (callError reads ctx to tell the deadline).
func (sp *streamPool) call(ctx context.Context, req *pluginpb.StreamCallRequest) (*pluginpb.StreamCallResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err() // as gRPC does before sending
	}
	if d, ok := ctx.Deadline(); ok {
		req.TimeoutNanos = max(int64(time.Until(d)), 1)
	}
	cs := sp.take()
	reused := cs != nil
	if !reused {
		var err error
		if cs, err = sp.open(ctx); err != nil {
			return nil, err
		}
	}
	resp, err, stale := cs.roundTrip(ctx, req)
	if stale && reused {
		// The idle stream had ended (a plugin may end one between calls):
		// the request never went out, so a fresh stream may carry it.
		cs.cancel()
		if cs, err = sp.open(ctx); err != nil {
			return nil, err
		}
		resp, err, _ = cs.roundTrip(ctx, req)
	}
	if err != nil || ctx.Err() != nil {
		// A stream that failed, or whose call was aborted (it may have
		// been cancelled mid-call), is never reused.
		cs.cancel()
	} else {
		sp.put(cs)
	}
	if err != nil {
		return nil, err
	}
	if c := codes.Code(resp.GetCode()); c != codes.OK {
		return nil, status.Error(c, resp.GetMessage())
	}
	return resp, nil
}

// roundTrip sends req and reads its answer, cancelling the stream should
// ctx end first. stale reports a stream found over before the request went
// out.
func (cs *callStream) roundTrip(ctx context.Context, req *pluginpb.StreamCallRequest) (_ *pluginpb.StreamCallResponse, _ error, stale bool) {
	stop := context.AfterFunc(ctx, cs.cancel)
	defer stop()
	if err := cs.s.Send(req); err != nil {
		if !errors.Is(err, io.EOF) {
			return nil, err, false // refused before sending (a status error)
		}
		// The stream is over; Recv returns how it ended.
		_, err := cs.s.Recv()
		return nil, streamError(err), true
	}
	resp, err := cs.s.Recv()
	if err != nil {
		return nil, streamError(err), false
	}
	return resp, nil, false
}

// streamError is the status error of a failed stream: a stream the plugin
// ended without answering (io.EOF) did not serve the call.
func streamError(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return status.Error(codes.Unavailable, "the plugin ended the call stream without answering")
	}
	return err
}
