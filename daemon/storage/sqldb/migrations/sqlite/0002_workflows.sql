-- 0002: workflows, their instances (runs) and the runs' steps.
-- Append-only: never edit a released migration; add a new file instead (and its postgres twin).

CREATE TABLE workflows (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    active       BOOLEAN NOT NULL DEFAULT 0,
    trigger_type TEXT,                           -- new_email | schedule; NULL: no trigger (manual runs only)
    trigger      TEXT,                           -- JSON of the Trigger; NULL with trigger_type
    steps        TEXT NOT NULL,                  -- JSON array of the Steps, in order
    created_at   TIMESTAMP NOT NULL,
    updated_at   TIMESTAMP NOT NULL
);

CREATE INDEX workflows_user_id ON workflows (user_id);
CREATE INDEX workflows_trigger_active ON workflows (trigger_type, active);

-- An instance keeps a snapshot of its workflow's trigger and steps, and has
-- no foreign key to workflows: deleting a workflow keeps its runs as history.
CREATE TABLE workflow_instances (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workflow_id      TEXT NOT NULL,
    workflow_name    TEXT NOT NULL,
    status           TEXT NOT NULL,              -- queued | running | completed | stopped | failed | cancelled | skipped
    trigger_input    TEXT NOT NULL,              -- JSON of the TriggerInput
    trigger_snapshot TEXT,                       -- JSON of the workflow's Trigger at creation; NULL: none
    steps_snapshot   TEXT NOT NULL,              -- JSON array of the workflow's Steps at creation
    idempotency_key  TEXT,                       -- NULL: none (many allowed)
    error            TEXT NOT NULL DEFAULT '',
    cancel_requested BOOLEAN NOT NULL DEFAULT 0,
    claimed_by       TEXT,                       -- the runner (replica) holding or last holding the run
    claim_expires_at TIMESTAMP,                  -- the claim's lease; a running instance past it is reclaimed
    attempts         INTEGER NOT NULL DEFAULT 0, -- claims so far
    log_id           TEXT,                       -- the run's "workflow" row in the agent log
    created_at       TIMESTAMP NOT NULL,
    started_at       TIMESTAMP,
    finished_at      TIMESTAMP,
    UNIQUE (user_id, idempotency_key)
);

CREATE INDEX workflow_instances_claim ON workflow_instances (status, claim_expires_at);
CREATE INDEX workflow_instances_queue ON workflow_instances (status, created_at);
CREATE INDEX workflow_instances_user_workflow ON workflow_instances (user_id, workflow_id, created_at);
CREATE INDEX workflow_instances_user_created ON workflow_instances (user_id, created_at);

CREATE TABLE step_runs (
    id                TEXT PRIMARY KEY,
    instance_id       TEXT NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL,
    step_id           TEXT NOT NULL,
    position          INTEGER NOT NULL,          -- 0-based order in the instance
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    status            TEXT NOT NULL,             -- pending | running | completed | failed | skipped | cancelled
    input             TEXT NOT NULL DEFAULT '',
    output            TEXT NOT NULL DEFAULT '',
    error             TEXT NOT NULL DEFAULT '',
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    cost              REAL NOT NULL DEFAULT 0,
    started_at        TIMESTAMP,
    finished_at       TIMESTAMP,
    UNIQUE (instance_id, position)
);
