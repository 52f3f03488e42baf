-- Why: an analysis (dry run) of a file may be pending or running while the same file is
-- imported (the analysis of the next upload, or `POST /api/v1/import/{id}/run` after it), as
-- `store::jobs::insert` already decides: the same file is one active job per kind, not per
-- dataset. Jobs without a file (exports: an empty `sha256`) never collide.

DROP INDEX jobs_one_active_file;
CREATE UNIQUE INDEX jobs_one_active_file ON jobs (org_id, dataset, kind, sha256)
    WHERE status IN ('pending', 'processing', 'paused') AND sha256 <> '';
