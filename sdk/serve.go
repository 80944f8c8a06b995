package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

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

// server answers the host's Describe and CallTool.
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
	resp := &pluginpb.DescribeResponse{Name: s.p.Name, Version: s.p.Version}
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
	if u.UserID == "" {
		return nil, status.Error(codes.InvalidArgument, "sdk: call without a user")
	}
	t, ok := s.tools[req.GetTool()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sdk: plugin %s has no tool %q", s.p.Name, req.GetTool())
	}
	var h Host = noHost{}
	if c := s.hostClient(); c != nil {
		h = &grpcHost{c: c, token: first(MetadataCapability)}
	}
	res, err := t.run(WithCall(ctx, u, h), Call{Arguments: json.RawMessage(req.GetArguments())})
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &pluginpb.CallToolResponse{Content: res.Content, IsError: res.IsError}, nil
}
