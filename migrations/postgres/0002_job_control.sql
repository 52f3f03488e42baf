-- Why: crash-safe job control (PostgreSQL twin of sqlite/0002): the lease owner, duplicate and
-- retry links, idempotency keys, and when retention removed a job's file.

ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN duplicate_of BIGINT;
ALTER TABLE jobs ADD COLUMN retry_of BIGINT;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN blob_deleted_at TIMESTAMPTZ;

CREATE UNIQUE INDEX jobs_one_active_file ON jobs (dataset, sha256)
    WHERE status IN ('pending', 'processing', 'paused');

CREATE UNIQUE INDEX jobs_idempotency ON jobs (created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL;
