package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore is the scale-out backend: one Redis database shared by every
// replica. Keys are stored as they are, so `redis-cli` shows the same
// "user:{uuid}:..." strings as the embedded store.
type RedisStore struct {
	c *redis.Client
}

var _ Store = (*RedisStore)(nil)

// NewRedis connects to url (redis://[user:password@]host:port/db, or
// rediss:// for TLS) and checks that the server answers.
func NewRedis(ctx context.Context, url string) (*RedisStore, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("kv: redis url: %w", err)
	}
	s := &RedisStore{c: redis.NewClient(opt)}
	if err := s.Ping(ctx); err != nil {
		_ = s.c.Close()
		return nil, err
	}
	return s, nil
}

// Get returns the value of key, or ErrNotFound.
func (s *RedisStore) Get(ctx context.Context, key string) (string, error) {
	v, err := s.c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("kv: get %q: %w", key, err)
	}
	return v, nil
}

// MGet returns the values of the keys that exist, in MGET batches.
func (s *RedisStore) MGet(ctx context.Context, keys ...string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	if err := s.mgetInto(ctx, keys, out); err != nil {
		return nil, fmt.Errorf("kv: mget: %w", err)
	}
	return out, nil
}

func (s *RedisStore) mgetInto(ctx context.Context, keys []string, out map[string]string) error {
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		vals, err := s.c.MGet(ctx, chunk...).Result()
		if err != nil {
			return err
		}
		for i, v := range vals {
			if str, ok := v.(string); ok { // nil: missing (or deleted since a SCAN)
				out[chunk[i]] = str
			}
		}
	}
	return nil
}

// Set stores value under key; ttl 0 sends a plain SET, which clears any
// earlier expiry.
func (s *RedisStore) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("kv: set %q: negative ttl %v", key, ttl)
	}
	if err := s.c.Set(ctx, key, value, ttl).Err(); err != nil {
		return fmt.Errorf("kv: set %q: %w", key, err)
	}
	return nil
}

// SetMany stores all pairs with one MSET (atomic, no expiry).
func (s *RedisStore) SetMany(ctx context.Context, pairs map[string]string) error {
	if len(pairs) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(pairs))
	for k, v := range pairs {
		args = append(args, k, v)
	}
	if err := s.c.MSet(ctx, args...).Err(); err != nil {
		return fmt.Errorf("kv: set many: %w", err)
	}
	return nil
}

// Delete removes keys with DEL, in batches.
func (s *RedisStore) Delete(ctx context.Context, keys ...string) error {
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		if err := s.c.Del(ctx, chunk...).Err(); err != nil {
			return fmt.Errorf("kv: delete: %w", err)
		}
	}
	return nil
}

// SetNX is SET key value NX PX ttl.
func (s *RedisStore) SetNX(ctx context.Context, key, value string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("kv: setnx %q: ttl must be positive, got %v", key, ttl)
	}
	ok, err := s.c.SetNX(ctx, key, value, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("kv: setnx %q: %w", key, err)
	}
	return ok, nil
}

// casScript and cadScript compare and act atomically inside Redis.
const (
	casScript = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) and 1 else return 0 end`
	cadScript = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`
)

// CompareAndSwap sets key to value with expiry ttl if it holds old (a Lua script).
func (s *RedisStore) CompareAndSwap(ctx context.Context, key, old, value string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("kv: compare-and-swap %q: ttl must be positive, got %v", key, ttl)
	}
	ms := max(ttl.Milliseconds(), 1)
	n, err := s.c.Eval(ctx, casScript, []string{key}, old, value, ms).Int()
	if err != nil {
		return false, fmt.Errorf("kv: compare-and-swap %q: %w", key, err)
	}
	return n == 1, nil
}

// CompareAndDelete deletes key if it holds old (a Lua script).
func (s *RedisStore) CompareAndDelete(ctx context.Context, key, old string) (bool, error) {
	n, err := s.c.Eval(ctx, cadScript, []string{key}, old).Int()
	if err != nil {
		return false, fmt.Errorf("kv: compare-and-delete %q: %w", key, err)
	}
	return n == 1, nil
}

// Incr is INCRBY; it keeps the key's expiry.
func (s *RedisStore) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	n, err := s.c.IncrBy(ctx, key, delta).Result()
	if err != nil {
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	}
	return n, nil
}

// Scan walks the keyspace with SCAN MATCH {escaped prefix}* and fetches the
// values with batched MGET. Keys deleted or expired between the two steps
// are left out.
func (s *RedisStore) Scan(ctx context.Context, prefix string) (map[string]string, error) {
	match := escapeGlob(prefix) + "*"
	seen := make(map[string]struct{})
	var keys []string
	var cursor uint64
	for {
		batch, next, err := s.c.Scan(ctx, cursor, match, 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("kv: scan %q: %w", prefix, err)
		}
		for _, k := range batch {
			if _, dup := seen[k]; !dup { // SCAN may return a key twice
				seen[k] = struct{}{}
				keys = append(keys, k)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	out := make(map[string]string, len(keys))
	if err := s.mgetInto(ctx, keys, out); err != nil {
		return nil, fmt.Errorf("kv: scan %q: %w", prefix, err)
	}
	return out, nil
}

// escapeGlob makes s match itself literally in a Redis glob pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 4)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Ping checks that the server answers.
func (s *RedisStore) Ping(ctx context.Context) error {
	if err := s.c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("kv: redis ping: %w", err)
	}
	return nil
}

// Close closes the client's connections.
func (s *RedisStore) Close() error {
	if err := s.c.Close(); err != nil {
		return fmt.Errorf("kv: redis close: %w", err)
	}
	return nil
}
