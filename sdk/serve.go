package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/sdk/pluginpb"
)

// Serve serves p to inboxd and blocks until inboxd stops the plugin. It is
// the whole of a plugin's main function. An invalid p, or a binary started
// by hand instead of by inboxd, prints why and exits with status 1.
//
// Anything the plugin writes to stdout or stderr (log, slog, fmt) ends up
// in the inboxd log, tagged with the plugin's name.
func Serve(p Plugin) {
	if err := p.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// inboxd owns the plugin's life: it stops the plugin over the protocol
	// (and the kernel kills it should inboxd die). A SIGTERM or SIGINT sent
	// to the whole service (systemd, a terminal's Ctrl-C) must not kill the
	// plugin under calls the daemon is still draining.
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: plugin.HandshakeConfig{MagicCookieKey: MagicCookieKey, MagicCookieValue: MagicCookieValue},
		VersionedPlugins: map[int]plugin.PluginSet{
			ProtocolVersion: {PluginSetName: &grpcPlugin{p: p}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: p.Name, Level: hclog.Info, Output: os.Stderr, JSONFormat: true,
		}),
	})
}

// grpcPlugin is the go-plugin side of a served plugin (the plugin process
// only ever calls GRPCServer).
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	p Plugin
}

func (g *grpcPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	srv := &server{p: g.p, broker: broker, tools: make(map[string]Tool, len(g.p.Tools))}
	for _, t := range g.p.Tools {
		srv.tools[t.Name] = t
	}
	pluginpb.RegisterPluginServer(s, srv)
	return nil
}

func (g *grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("sdk: the plugin side has no client")
}

// server answers the host's Describe, CallTool and CallStream.
type server struct {
	pluginpb.UnimplementedPluginServer
	p      Plugin
	broker *plugin.GRPCBroker
	tools  map[string]Tool

	mu       sync.Mutex
	hostID   uint32
	hostConn *grpc.ClientConn // the one connection to the host services, kept open
	host     pluginpb.HostClient
}

func (s *server) Describe(_ context.Context, req *pluginpb.DescribeRequest) (*pluginpb.DescribeResponse, error) {
	if id := req.GetHostBrokerId(); id != 0 {
		if err := s.connectHost(id); err != nil {
			return nil, status.Errorf(codes.Unavailable, "sdk: connect to host services: %v", err)
		}
	}
	resp := &pluginpb.DescribeResponse{Name: s.p.Name, Version: s.p.Version, CallStream: true}
	for _, n := range s.p.Needs {
		resp.Needs = append(resp.Needs, string(n))
	}
	for _, t := range s.p.Tools {
		resp.Tools = append(resp.Tools, &pluginpb.Tool{Name: t.Name, Description: t.Description, InputSchema: t.schema()})
	}
	return resp, nil
}

// connectHost dials the host's service once per broker id; every call's
// host requests share that connection.
func (s *server) connectHost(id uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hostConn != nil && s.hostID == id {
		return nil
	}
	conn, err := s.broker.Dial(id)
	if err != nil {
		return err
	}
	if s.hostConn != nil {
		_ = s.hostConn.Close()
	}
	s.hostID, s.hostConn, s.host = id, conn, pluginpb.NewHostClient(conn)
	return nil
}

func (s *server) hostClient() pluginpb.HostClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.host
}

// CallTool runs one call, its context in the request's metadata.
func (s *server) CallTool(ctx context.Context, req *pluginpb.CallToolRequest) (*pluginpb.CallToolResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	u := User{
		UserID: first(MetadataUserID), WorkflowID: first(MetadataWorkflowID),
		InstanceID: first(MetadataInstanceID), StepID: first(MetadataStepID),
	}
	res, err := s.call(ctx, req.GetTool(), req.GetArguments(), u, first(MetadataCapability))
	if err != nil {
		return nil, err
	}
	return &pluginpb.CallToolResponse{Content: res.Content, IsError: res.IsError}, nil
}

// CallStream runs the calls the host sends over one stream, one at a time,
// until the host closes its side (io.EOF) or cancels the stream. Each call
// answers what CallTool would, a failure as its status code and message; a
// call's context ends with the stream's, or at the call's timeout.
func (s *server) CallStream(stream pluginpb.Plugin_CallStreamServer) error {
	streamMD, _ := metadata.FromIncomingContext(stream.Context())
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(s.streamCall(stream.Context(), streamMD, req)); err != nil {
			return err
		}
	}
}

// streamCall runs one call received over CallStream, on a stream whose
// incoming metadata is streamMD.
func (s *server) streamCall(ctx context.Context, streamMD metadata.MD, req *pluginpb.StreamCallRequest) *pluginpb.StreamCallResponse {
	if d := req.GetTimeoutNanos(); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(d))
		defer cancel()
	}
	// The handler sees the call's context as incoming metadata too, as a
	// unary call's handler does: plugins that read it (rather than UserFrom)
	// work whichever way the host calls.
	md := streamMD.Copy()
	md[MetadataUserID] = []string{req.GetUserId()}
	md[MetadataWorkflowID] = []string{req.GetWorkflowId()}
	md[MetadataInstanceID] = []string{req.GetInstanceId()}
	md[MetadataStepID] = []string{req.GetStepId()}
	md[MetadataCapability] = []string{req.GetCapability()}
	ctx = metadata.NewIncomingContext(ctx, md)
	u := User{UserID: req.GetUserId(), WorkflowID: req.GetWorkflowId(), InstanceID: req.GetInstanceId(), StepID: req.GetStepId()}
	res, err := s.call(ctx, req.GetTool(), req.GetArguments(), u, req.GetCapability())
	if err != nil {
		st := status.Convert(err)
		return &pluginpb.StreamCallResponse{Code: int32(st.Code()), Message: st.Message()}
	}
	return &pluginpb.StreamCallResponse{Content: res.Content, IsError: res.IsError}
}

// call runs one tool call however it came (CallTool or CallStream), so
// that the two cannot answer differently: its result, or the status error
// CallTool fails with.
func (s *server) call(ctx context.Context, tool string, args []byte, u User, token string) (Result, error) {
	if u.UserID == "" {
		return Result{}, status.Error(codes.InvalidArgument, "sdk: call without a user")
	}
	t, ok := s.tools[tool]
	if !ok {
		return Result{}, status.Errorf(codes.NotFound, "sdk: plugin %s has no tool %q", s.p.Name, tool)
	}
	var h Host = noHost{}
	if c := s.hostClient(); c != nil {
		h = &grpcHost{c: c, token: token}
	}
	res, err := t.run(WithCall(ctx, u, h), Call{Arguments: json.RawMessage(args)})
	if err != nil {
		if ctx.Err() != nil {
			return Result{}, status.FromContextError(ctx.Err()).Err()
		}
		return Result{}, status.Error(codes.Unknown, err.Error())
	}
	return res, nil
}
