-- Why: the job store (PostgreSQL twin of sqlite/0001). A job row is the durable import log: its
-- status, the file it reads, the checkpoint and counts committed with each batch, and the lease
-- of the worker that owns it. Row errors and API tokens live beside it.

CREATE TABLE tokens (
    id           BIGSERIAL PRIMARY KEY,
    label        TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    dataset          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed', 'cancelled')),
    mode             TEXT NOT NULL,
    filename         TEXT NOT NULL,
    blob             TEXT NOT NULL,
    file_size        BIGINT NOT NULL,
    sha256           TEXT NOT NULL,
    format           TEXT NOT NULL,
    options          TEXT NOT NULL,
    header           TEXT NOT NULL,
    mapping          TEXT NOT NULL,
    total_rows       BIGINT,
    rows_done        BIGINT NOT NULL DEFAULT 0,
    created_count    BIGINT NOT NULL DEFAULT 0,
    updated_count    BIGINT NOT NULL DEFAULT 0,
    unchanged_count  BIGINT NOT NULL DEFAULT 0,
    error_count      BIGINT NOT NULL DEFAULT 0,
    batches_done     BIGINT NOT NULL DEFAULT 0,
    error            TEXT,
    created_by       BIGINT REFERENCES tokens (id),
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    completed_at     TIMESTAMPTZ,
    attempts         BIGINT NOT NULL DEFAULT 0,
    lease_token      TEXT,
    lease_expires_ms BIGINT
);

CREATE INDEX jobs_claimable ON jobs (status, lease_expires_ms);
CREATE INDEX jobs_dataset ON jobs (dataset, id);

CREATE TABLE job_errors (
    job_id   BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    "row"    BIGINT NOT NULL,
    "column" TEXT,
    value    TEXT,
    message  TEXT NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (job_id, "row")
);
