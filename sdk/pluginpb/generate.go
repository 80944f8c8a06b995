// Package pluginpb is the generated Go code of inboxd's plugin wire protocol
// (sdk/proto/inboxd/plugin/v1/plugin.proto). Plugin authors do not use it:
// package sdk speaks it for them. It is public only because the host
// (daemon/pluginhost) speaks it too.
package pluginpb

//go:generate protoc -I ../proto --go_out=. --go_opt=module=github.com/inboxd/inboxd/sdk/pluginpb --go-grpc_out=. --go-grpc_opt=module=github.com/inboxd/inboxd/sdk/pluginpb inboxd/plugin/v1/plugin.proto
