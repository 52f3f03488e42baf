-- Why: crash-safe job control. Workers record who holds a lease (so an operator, and the
-- two-worker crash test, can see it); uploads can be recognised as duplicates (same file for the
-- same dataset while one is active → 409) or replayed by Idempotency-Key; a retry from scratch
-- links to the job it repeats; the retention sweeper records when it removed a job's file.

ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN duplicate_of INTEGER;
ALTER TABLE jobs ADD COLUMN retry_of INTEGER;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN blob_deleted_at TEXT;

-- At most one active job per file and dataset: the database, not a check-then-insert, decides.
CREATE UNIQUE INDEX jobs_one_active_file ON jobs (dataset, sha256)
    WHERE status IN ('pending', 'processing', 'paused');

-- An idempotency key names one upload of one caller.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL;
