-- 0005: a log row records why its step, trigger check or run failed (the
-- provider's error after its retries, a refused prompt...), so the per-user
-- log shows failures, not only successes. Empty for a row that did not fail.
-- Append-only: never edit a released migration; add 0006_... instead (and its twin).

ALTER TABLE logs ADD COLUMN error TEXT NOT NULL DEFAULT '';
