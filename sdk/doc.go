// Package sdk is the public surface for inboxd plugin authors: the only
// package a third-party plugin imports. A plugin is a separate process that
// inboxd starts and talks to over gRPC (hashicorp/go-plugin); it serves tools,
// learns the calling user from the host, and reaches that user's data only
// through host services scoped to the call.
//
// The SDK is versioned by its handshake (magic cookie INBOXD_PLUGIN and the
// protocol version); it grows through new optional interfaces, and through
// new methods on Host (which the SDK implements and plugins only use), and
// never changes existing ones. It imports nothing from the daemon.
//
// # Writing a plugin
//
// A plugin's main is one call to Serve with the plugin's name, version,
// tools and needs. Agents see a tool as "{plugin}-{tool}". A handler gets
// the call's arguments (decode them with Call.Bind) and a context that
// carries the call:
//
//   - UserFrom(ctx): the user, workflow, instance and step of the call;
//   - HostFrom(ctx): the host services, scoped to that user for the length
//     of the call: the user's settings (the IMAP password only with
//     NeedIMAPCredentials), the plugin's own per-user key-value store,
//     semantic search over the user's mail threads and upsert into that
//     collection (embedded with the user's embedding model), an LLM
//     completion with the user's model, and the tone-of-voice profile
//     (NeedToneProfile).
//
// Return Errorf for a failure the model should read (bad input, nothing
// found) and an error for a failure of the call itself. Whatever the plugin
// prints to stdout or stderr goes to the inboxd log.
//
// Build the plugin into the plugin directory under its own name
// (go build -o $PLUGINS_DIR/NAME); contrib/examples/plugin-wordcount is a
// complete example. Test it with package sdk/sdktest, which runs the tools
// in-process with a chosen user and a fake host.
//
// # Protocol
//
// The wire protocol is sdk/proto/inboxd/plugin/v1/plugin.proto (Go code in
// sdk/pluginpb). Every tool call carries the user context and a capability
// token, minted by the host for that call and expiring with it: as gRPC
// metadata on a unary CallTool, in the request message on CallStream (the
// host's pooled streams, one call at a time each). The plugin's
// host-service requests carry the token as metadata, and the host
// authorises them by the token alone. The host services travel over
// one go-plugin broker connection per plugin process, opened once.
package sdk
