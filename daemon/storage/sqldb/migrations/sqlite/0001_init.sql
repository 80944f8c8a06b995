-- 0001: users, their API keys, and the embedded key-value store.
-- Append-only: never edit a released migration; add 0002_... instead (and its postgres twin).

CREATE TABLE users (
    id           TEXT PRIMARY KEY,               -- canonical lowercase UUID
    email        TEXT NOT NULL UNIQUE,           -- lower-cased, trimmed
    display_name TEXT NOT NULL DEFAULT '',
    auth_subject TEXT UNIQUE,                    -- OIDC "sub"; NULL for local users
    admin        BOOLEAN NOT NULL DEFAULT 0,
    disabled     BOOLEAN NOT NULL DEFAULT 0,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    key_hash     TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the whole key; the key itself is never stored
    prefix       TEXT NOT NULL,                  -- the start of the key, for display
    created_at   TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP
);

CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,                 -- compared bytewise (BINARY), so prefix ranges are exact
    value      TEXT NOT NULL,
    expires_at BIGINT                            -- unix milliseconds; NULL never expires
);

CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
