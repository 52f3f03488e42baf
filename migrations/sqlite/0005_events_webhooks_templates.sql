-- Why: live progress, notifications and saved mappings (issue 6).
-- `job_events` is an append-only log of what happened to each job: a row for every job created,
-- every status change, every committed batch and the row total once counted. Triggers write it
-- in the same transaction as the change itself, so it is complete whichever process (serve,
-- worker) made the change, and its `seq` gives Server-Sent Events exact, ordered ids for
-- `Last-Event-ID` resumption. Each row is a snapshot of the job's counts at that moment.
-- `webhooks` and `webhook_deliveries` record subscriptions and every delivery attempt;
-- `webhook_cursor` is how far the dispatcher has turned job events into deliveries.
-- `mapping_templates` are named column mappings saved per dataset.

CREATE TABLE job_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('created', 'status', 'progress')),
    dataset         TEXT NOT NULL,
    filename        TEXT NOT NULL,
    status          TEXT NOT NULL,
    total_rows      INTEGER,
    rows_done       INTEGER NOT NULL,
    created_count   INTEGER NOT NULL,
    updated_count   INTEGER NOT NULL,
    unchanged_count INTEGER NOT NULL,
    error_count     INTEGER NOT NULL,
    batches_done    INTEGER NOT NULL,
    error           TEXT,
    started_at      TEXT,
    completed_at    TEXT,
    at              TEXT NOT NULL
);

CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE TRIGGER job_events_on_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_events (job_id, kind, dataset, filename, status, total_rows, rows_done,
        created_count, updated_count, unchanged_count, error_count, batches_done, error,
        started_at, completed_at, at)
    VALUES (NEW.id, 'created', NEW.dataset, NEW.filename, NEW.status, NEW.total_rows,
        NEW.rows_done, NEW.created_count, NEW.updated_count, NEW.unchanged_count,
        NEW.error_count, NEW.batches_done, NEW.error, NEW.started_at, NEW.completed_at,
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER job_events_on_update AFTER UPDATE OF status, batches_done, total_rows ON jobs
WHEN NEW.status IS NOT OLD.status
  OR NEW.batches_done IS NOT OLD.batches_done
  OR NEW.total_rows IS NOT OLD.total_rows
BEGIN
    INSERT INTO job_events (job_id, kind, dataset, filename, status, total_rows, rows_done,
        created_count, updated_count, unchanged_count, error_count, batches_done, error,
        started_at, completed_at, at)
    VALUES (NEW.id, CASE WHEN NEW.status IS NOT OLD.status THEN 'status' ELSE 'progress' END,
        NEW.dataset, NEW.filename, NEW.status, NEW.total_rows, NEW.rows_done,
        NEW.created_count, NEW.updated_count, NEW.unchanged_count, NEW.error_count,
        NEW.batches_done, NEW.error, NEW.started_at, NEW.completed_at,
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TABLE webhooks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    url        TEXT NOT NULL,
    -- JSON array of event names: job.completed, job.failed, job.cancelled
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,                -- HMAC-SHA256 key; shown to the caller once
    created_by INTEGER REFERENCES tokens (id),
    created_at TEXT NOT NULL
);

-- One row per (webhook, job event) to deliver; its attempts are in webhook_attempts.
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      INTEGER NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq       INTEGER NOT NULL,
    event           TEXT NOT NULL,
    job_id          INTEGER NOT NULL,
    payload         TEXT NOT NULL,           -- the exact JSON body every attempt sends
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,        -- unix ms; also pushed ahead while an attempt runs
    created_at      TEXT NOT NULL,
    UNIQUE (webhook_id, event_seq)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);

CREATE TABLE webhook_attempts (
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    http_status INTEGER,                     -- NULL when no response arrived
    error       TEXT,                        -- why the attempt failed, if it did
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;

CREATE TABLE webhook_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL                     -- job_events up to here have become deliveries
);
-- Webhooks fire for events after the upgrade, not for the history before it.
INSERT INTO webhook_cursor (id, seq) VALUES (1, (SELECT COALESCE(MAX(seq), 0) FROM job_events));

CREATE TABLE mapping_templates (
    dataset    TEXT NOT NULL,
    name       TEXT NOT NULL,
    mapping    TEXT NOT NULL,                -- JSON object: header → field name or null
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    used_at    TEXT,
    PRIMARY KEY (dataset, name)
);
