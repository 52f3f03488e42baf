-- Why: the orphan sweep asks which upload files jobs still reference (postgres/0010 also dates
-- stored blobs; SQLite keeps its uploads on disk, where the file's time serves).

CREATE INDEX jobs_blob ON jobs (blob);
