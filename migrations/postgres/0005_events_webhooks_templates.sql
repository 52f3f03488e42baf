-- Why: live progress, notifications and saved mappings (issue 6; PostgreSQL twin of
-- sqlite/0005). A trigger on `jobs` appends to `job_events` in the same transaction as every job
-- insert, status change, batch commit and row-total count, so the log is complete whichever
-- process made the change. `at` is the insert's wall clock (clock_timestamp), which readers use to
-- tell a sequence gap left by a rolled-back transaction from one still in flight.

CREATE TABLE job_events (
    seq             BIGSERIAL PRIMARY KEY,
    job_id          BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('created', 'status', 'progress')),
    dataset         TEXT NOT NULL,
    filename        TEXT NOT NULL,
    status          TEXT NOT NULL,
    total_rows      BIGINT,
    rows_done       BIGINT NOT NULL,
    created_count   BIGINT NOT NULL,
    updated_count   BIGINT NOT NULL,
    unchanged_count BIGINT NOT NULL,
    error_count     BIGINT NOT NULL,
    batches_done    BIGINT NOT NULL,
    error           TEXT,
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ,
    at              TIMESTAMPTZ NOT NULL
);

CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE FUNCTION sluice_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind := 'created';
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        kind := 'status';
    ELSIF NEW.batches_done IS DISTINCT FROM OLD.batches_done OR NEW.total_rows IS DISTINCT FROM OLD.total_rows THEN
        kind := 'progress';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO job_events (job_id, kind, dataset, filename, status, total_rows, rows_done,
        created_count, updated_count, unchanged_count, error_count, batches_done, error,
        started_at, completed_at, at)
    VALUES (NEW.id, kind, NEW.dataset, NEW.filename, NEW.status, NEW.total_rows, NEW.rows_done,
        NEW.created_count, NEW.updated_count, NEW.unchanged_count, NEW.error_count,
        NEW.batches_done, NEW.error, NEW.started_at, NEW.completed_at, clock_timestamp());
    RETURN NULL;
END
$$;

CREATE TRIGGER job_events_on_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION sluice_job_event();
CREATE TRIGGER job_events_on_update AFTER UPDATE OF status, batches_done, total_rows ON jobs
    FOR EACH ROW EXECUTE FUNCTION sluice_job_event();

CREATE TABLE webhooks (
    id         BIGSERIAL PRIMARY KEY,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_by BIGINT REFERENCES tokens (id),
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    webhook_id      BIGINT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq       BIGINT NOT NULL,
    event           TEXT NOT NULL,
    job_id          BIGINT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (webhook_id, event_seq)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);

CREATE TABLE webhook_attempts (
    delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    http_status INT,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE webhook_cursor (
    id  INT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO webhook_cursor (id, seq) VALUES (1, (SELECT COALESCE(MAX(seq), 0) FROM job_events));

CREATE TABLE mapping_templates (
    dataset    TEXT NOT NULL,
    name       TEXT NOT NULL,
    mapping    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    PRIMARY KEY (dataset, name)
);
