package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// tokenEcho is a host whose KVGet answers the capability token the request
// carried.
type tokenEcho struct {
	pluginpb.HostClient // nil: only KVGet is used
}

func (tokenEcho) KVGet(ctx context.Context, _ *pluginpb.KVGetRequest, _ ...grpc.CallOption) (*pluginpb.KVGetResponse, error) {
	md, _ := metadata.FromOutgoingContext(ctx)
	return &pluginpb.KVGetResponse{Value: fmt.Sprint(md.Get(MetadataCapability)), Found: true}, nil
}

// serveTest serves p's server in-process with a host, as Serve would over
// go-plugin, and returns a client of it.
func serveTest(t *testing.T, p Plugin) pluginpb.PluginClient {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &server{p: p, tools: map[string]Tool{}, host: tokenEcho{}}
	for _, tool := range p.Tools {
		srv.tools[tool.Name] = tool
	}
	s := grpc.NewServer()
	pluginpb.RegisterPluginServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); s.Stop() })
	return pluginpb.NewPluginClient(conn)
}

// TestCallStreamAnswersAsCallTool: every call over CallStream answers what
// the same call over unary CallTool does (a result, or the same status
// code and message), one after the other on one stream, failures
// included; and its handler sees the same context: user, host requests
// with the call's token, incoming metadata.
func TestCallStreamAnswersAsCallTool(t *testing.T) {
	p := Plugin{Name: "p", Tools: []Tool{
		{Name: "whoami", Handler: func(ctx context.Context, call Call) (Result, error) {
			u, _ := UserFrom(ctx)
			token, _, err := HostFrom(ctx).KVGet(ctx, "k")
			if err != nil {
				return Result{}, err
			}
			md, _ := metadata.FromIncomingContext(ctx)
			inMD := map[string][]string{}
			for _, k := range []string{MetadataUserID, MetadataWorkflowID, MetadataInstanceID, MetadataStepID, MetadataCapability, "content-type"} {
				inMD[k] = md.Get(k)
			}
			return JSON(map[string]any{"user": u, "args": call.Arguments, "token": token, "metadata": inMD})
		}},
		{Name: "fail", Handler: func(context.Context, Call) (Result, error) { return Result{}, errors.New("deliberate failure") }},
		{Name: "tool_error", Handler: func(context.Context, Call) (Result, error) { return Errorf("no such message"), nil }},
		{Name: "panics", Handler: func(context.Context, Call) (Result, error) { panic("boom") }},
	}}
	client := serveTest(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d, err := client.Describe(ctx, &pluginpb.DescribeRequest{}); err != nil || !d.GetCallStream() {
		t.Fatalf("Describe: call_stream %v, %v", d.GetCallStream(), err)
	}
	stream, err := client.CallStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	user := User{UserID: "u-1", WorkflowID: "wf", InstanceID: "inst", StepID: "step"}
	cases := []struct {
		name, tool string
		user       User
		code       codes.Code
		message    string // a failure's
	}{
		{"result", "whoami", user, codes.OK, ""},
		{"tool error result", "tool_error", user, codes.OK, ""},
		{"no user", "whoami", User{WorkflowID: "wf"}, codes.InvalidArgument, "sdk: call without a user"},
		{"unknown tool", "nope", user, codes.NotFound, `sdk: plugin p has no tool "nope"`},
		{"handler error", "fail", user, codes.Unknown, "deliberate failure"},
		{"handler panic", "panics", user, codes.Unknown, `sdk: tool "panics" panicked: boom`},
		{"a result after failures", "whoami", User{UserID: "u-2"}, codes.OK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := []byte(`{"n":1}`)
			token := "token-" + tc.name
			md := metadata.Pairs(MetadataUserID, tc.user.UserID, MetadataWorkflowID, tc.user.WorkflowID,
				MetadataInstanceID, tc.user.InstanceID, MetadataStepID, tc.user.StepID, MetadataCapability, token)
			unary, uerr := client.CallTool(metadata.NewOutgoingContext(ctx, md), &pluginpb.CallToolRequest{Tool: tc.tool, Arguments: args})
			ust := status.Convert(uerr)
			if ust.Code() != tc.code || ust.Message() != tc.message {
				t.Fatalf("CallTool: %v, want %s %q", uerr, tc.code, tc.message)
			}

			err := stream.Send(&pluginpb.StreamCallRequest{
				Tool: tc.tool, Arguments: args, UserId: tc.user.UserID, WorkflowId: tc.user.WorkflowID,
				InstanceId: tc.user.InstanceID, StepId: tc.user.StepID, Capability: token, TimeoutNanos: int64(10 * time.Second),
			})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if codes.Code(resp.GetCode()) != ust.Code() || resp.GetMessage() != ust.Message() {
				t.Errorf("CallStream answered %d %q, CallTool %s %q", resp.GetCode(), resp.GetMessage(), ust.Code(), ust.Message())
			}
			if string(resp.GetContent()) != string(unary.GetContent()) || resp.GetIsError() != unary.GetIsError() {
				t.Errorf("CallStream answered %s (is_error %v), CallTool %s (%v)", resp.GetContent(), resp.GetIsError(), unary.GetContent(), unary.GetIsError())
			}
			if tc.tool == "whoami" && tc.code == codes.OK {
				var got struct {
					User     User
					Args     json.RawMessage
					Token    string
					Metadata map[string][]string
				}
				err := json.Unmarshal(resp.GetContent(), &got)
				if err != nil || got.User != tc.user || string(got.Args) != string(args) || got.Token != "["+token+"]" ||
					fmt.Sprint(got.Metadata[MetadataCapability]) != "["+token+"]" || fmt.Sprint(got.Metadata[MetadataUserID]) != "["+tc.user.UserID+"]" {
					t.Errorf("the handler saw %s (%v)", resp.GetContent(), err)
				}
			}
		})
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseSend: %v, want the stream to end (io.EOF)", err)
	}
}

// TestCallStreamContext: a call's context ends at its timeout_nanos, and
// when the host cancels the stream.
func TestCallStreamContext(t *testing.T) {
	ended := make(chan error, 1)
	p := Plugin{Name: "p", Tools: []Tool{{Name: "wait", Handler: func(ctx context.Context, _ Call) (Result, error) {
		<-ctx.Done()
		ended <- ctx.Err()
		return Result{}, ctx.Err()
	}}}}
	client := serveTest(t, p)
	wait := &pluginpb.StreamCallRequest{Tool: "wait", UserId: "u"}

	t.Run("timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // should the timeout be ignored
		defer cancel()
		stream, err := client.CallStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		req := &pluginpb.StreamCallRequest{Tool: "wait", UserId: "u", TimeoutNanos: int64(100 * time.Millisecond)}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil || codes.Code(resp.GetCode()) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
			t.Fatalf("answer %v %v after %s, want DeadlineExceeded", resp, err, time.Since(start))
		}
		if err := <-ended; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the handler saw %v", err)
		}
	})

	t.Run("stream cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		stream, err := client.CallStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(wait); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(100*time.Millisecond, cancel)
		select {
		case err := <-ended:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the handler saw %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("cancelling the stream did not end the handler's context")
		}
	})
}
