// Package sdk is the public surface for inboxd plugin authors: the only
// package a third-party plugin imports. A plugin is a separate process that
// inboxd starts and talks to over gRPC (hashicorp/go-plugin); it serves tools,
// learns the calling user from the host, and reaches that user's data only
// through host services scoped to the call.
//
// The SDK is versioned by its handshake (magic cookie INBOXD_PLUGIN and the
// protocol version); it grows through new optional interfaces and never
// changes existing ones. It imports nothing from the daemon.
package sdk
