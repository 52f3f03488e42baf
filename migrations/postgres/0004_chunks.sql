-- Why: parallel chunk jobs (seed 004; PostgreSQL twin of sqlite/0004). A large upload's job (the parent) splits its file by
-- hash(key) into chunk jobs that any worker runs; the parent counts its chunks and the last chunk
-- to complete finalises it.

ALTER TABLE jobs ADD COLUMN parent_id BIGINT REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE jobs ADD COLUMN chunk_index INTEGER;
ALTER TABLE jobs ADD COLUMN chunks_total INTEGER;
ALTER TABLE jobs ADD COLUMN chunks_completed INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
