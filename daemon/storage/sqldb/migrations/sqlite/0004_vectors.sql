-- 0004: the embedded vector store (daemon/vectors): one collection per user
-- (its embedding model and vector size) and the collection's points.
-- Append-only: never edit a released migration; add 0005_... instead (and its postgres twin).

CREATE TABLE vector_collections (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    model      TEXT NOT NULL,                    -- embedding model key from the catalog
    dims       INTEGER NOT NULL,                 -- vector size
    version    BIGINT NOT NULL DEFAULT 0,        -- bumped by every write: in-memory indexes reload when it moved
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE vectors (
    user_id  TEXT NOT NULL REFERENCES vector_collections (user_id) ON DELETE CASCADE,
    point_id TEXT NOT NULL,                      -- the thread id
    vector   BLOB NOT NULL,                      -- dims little-endian float32 values
    payload  TEXT NOT NULL,                      -- JSON object
    fields   TEXT NOT NULL,                      -- JSON object: the payload's filterable fields (booleans, numbers, short strings, string lists)
    PRIMARY KEY (user_id, point_id)
);
