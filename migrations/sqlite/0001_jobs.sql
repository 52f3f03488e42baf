-- Why: the job store. A job row is the durable import log (seed 000's ImportLog): its status,
-- the file it reads, the checkpoint and counts committed with each batch, and the lease of the
-- worker that owns it. Row errors and API tokens live beside it.

CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    label        TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the token; the token itself is never stored
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset          TEXT NOT NULL,
    -- pending → processing → completed | failed (paused and cancelled arrive with crash-safe jobs)
    status           TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed', 'cancelled')),
    mode             TEXT NOT NULL,
    filename         TEXT NOT NULL,
    blob             TEXT NOT NULL,          -- name of the stored upload inside the blob directory
    file_size        INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    format           TEXT NOT NULL,
    options          TEXT NOT NULL,          -- JSON: how to read the file (delimiter, …)
    header           TEXT NOT NULL,          -- JSON array: the file's header row
    mapping          TEXT NOT NULL,          -- JSON: column → field, decided at upload
    total_rows       INTEGER,                -- data rows of the file, counted when the job starts
    rows_done        INTEGER NOT NULL DEFAULT 0,   -- checkpoint: records committed
    created_count    INTEGER NOT NULL DEFAULT 0,
    updated_count    INTEGER NOT NULL DEFAULT 0,
    unchanged_count  INTEGER NOT NULL DEFAULT 0,
    error_count      INTEGER NOT NULL DEFAULT 0,
    batches_done     INTEGER NOT NULL DEFAULT 0,
    error            TEXT,                   -- why a failed job failed, fit for users
    created_by       INTEGER REFERENCES tokens (id),
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    completed_at     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_token      TEXT,                   -- fences every write of the worker that claimed it
    lease_expires_ms INTEGER                 -- unix milliseconds; an expired lease is claimable
);

CREATE INDEX jobs_claimable ON jobs (status, lease_expires_ms);
CREATE INDEX jobs_dataset ON jobs (dataset, id);

CREATE TABLE job_errors (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    row     INTEGER NOT NULL,                -- as a spreadsheet shows it: the header is row 1
    column  TEXT,
    value   TEXT,
    message TEXT NOT NULL,
    record  TEXT NOT NULL,                   -- JSON array: the original fields of the row
    PRIMARY KEY (job_id, row)
) WITHOUT ROWID;
