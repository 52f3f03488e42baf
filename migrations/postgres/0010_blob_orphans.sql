-- Why: orphaned uploads (a crash between storing an upload and inserting its job) are removed by
-- the sweeper once older than a grace period, so a stored blob needs its age; the sweep asks which
-- blobs jobs still reference, so jobs.blob is indexed.

ALTER TABLE blob_chunks ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX jobs_blob ON jobs (blob);
