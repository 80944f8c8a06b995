// Package kv owns the key-value store behind per-user settings, trigger state,
// job status and leases. Two backends implement Store: a table in the SQL
// database (the embedded default) and Redis. Both pass one contract suite.
//
// Keys are plain strings; user-scoped keys are built only by userid.ID.Key, so
// that every key of a user starts with "user:{uuid}:".
package kv

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Get for a missing or expired key.
var ErrNotFound = errors.New("kv: not found")

// Store is the key-value contract every backend fulfils.
type Store interface {
	// Get returns the value of key, or ErrNotFound.
	Get(ctx context.Context, key string) (string, error)
	// MGet returns the values of keys that exist; missing keys are absent from the map.
	MGet(ctx context.Context, keys ...string) (map[string]string, error)
	// Set stores value under key; ttl 0 means no expiry. Set clears an earlier expiry.
	Set(ctx context.Context, key, value string, ttl time.Duration) error
	// SetMany stores all pairs atomically, without expiry.
	SetMany(ctx context.Context, pairs map[string]string) error
	// Delete removes keys; missing keys are not an error.
	Delete(ctx context.Context, keys ...string) error
	// SetNX stores value only if key is absent (or expired), with expiry ttl (> 0).
	// It reports whether it stored the value. Leases use it.
	SetNX(ctx context.Context, key, value string, ttl time.Duration) (bool, error)
	// CompareAndSwap sets key to value with expiry ttl (> 0) only if its live
	// value is old, and reports whether it did. Leases renew with it.
	CompareAndSwap(ctx context.Context, key, old, value string, ttl time.Duration) (bool, error)
	// CompareAndDelete deletes key only if its live value is old, and reports
	// whether it did. Leases are released with it.
	CompareAndDelete(ctx context.Context, key, old string) (bool, error)
	// Incr adds delta to the integer value of key (absent counts as 0) and returns the result.
	Incr(ctx context.Context, key string, delta int64) (int64, error)
	// Scan returns every live key starting with prefix, with its value.
	Scan(ctx context.Context, prefix string) (map[string]string, error)
	// Ping checks that the backend answers (readiness).
	Ping(ctx context.Context) error
	// Close releases the backend's resources.
	Close() error
}
