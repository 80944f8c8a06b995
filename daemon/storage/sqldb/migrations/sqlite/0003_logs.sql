-- 0003: the agent log (daemon/logs): one row per workflow run and one per
-- step in it, per user. Every query filters on user_id, so every index starts
-- with it. Text columns are NOT NULL with '' for "none"; end_time is NULL
-- while the run or step is going. Append-only: never edit a released
-- migration (and keep the postgres twin in step).

CREATE TABLE logs (
    id                   TEXT PRIMARY KEY,            -- canonical lowercase UUID
    user_id              TEXT NOT NULL,
    reference_string     TEXT NOT NULL DEFAULT '',
    log_type             TEXT NOT NULL CHECK (log_type IN
                             ('workflow', 'custom_agent', 'custom_llm', 'stop_checker', 'tool', 'trigger_check')),
    workflow_id          TEXT NOT NULL DEFAULT '',
    workflow_instance_id TEXT NOT NULL DEFAULT '',
    workflow_name        TEXT NOT NULL DEFAULT '',
    step_id              TEXT NOT NULL DEFAULT '',
    step_instance_id     TEXT NOT NULL DEFAULT '',
    step_name            TEXT NOT NULL DEFAULT '',
    messages             TEXT NOT NULL DEFAULT '[]',  -- JSON
    needs_review         BOOLEAN NOT NULL DEFAULT 0,
    feedback             TEXT NOT NULL DEFAULT '',
    start_time           TIMESTAMP NOT NULL,
    end_time             TIMESTAMP,
    prompt_tokens        INTEGER NOT NULL DEFAULT 0,
    completion_tokens    INTEGER NOT NULL DEFAULT 0,
    total_tokens         INTEGER NOT NULL DEFAULT 0,
    total_cost           REAL NOT NULL DEFAULT 0,
    model                TEXT NOT NULL DEFAULT ''
);

-- Newest first with keyset paging on (start_time, id); costs over a time range.
CREATE INDEX logs_user_start ON logs (user_id, start_time, id);
-- Filter by log type; the parents of the grouped view (log_type = 'workflow').
CREATE INDEX logs_user_type ON logs (user_id, log_type, start_time, id);
-- Filter by workflow.
CREATE INDEX logs_user_workflow ON logs (user_id, workflow_id, start_time, id);
-- One run's rows: filter by instance, the grouped view's children, usage.
CREATE INDEX logs_user_instance ON logs (user_id, workflow_instance_id, start_time, id);
-- One step run's rows.
CREATE INDEX logs_user_step_instance ON logs (user_id, step_instance_id) WHERE step_instance_id <> '';
-- The review queue.
CREATE INDEX logs_user_review ON logs (user_id, start_time, id) WHERE needs_review;
