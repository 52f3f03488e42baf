-- Why: `mode=sync` (issue 16) deletes, when the job completes, the organisation's rows whose keys
-- the file does not have. A row of the file that was rejected still names its key when its key
-- fields read well; that key is kept as the row error's `key` (JSON, the ledger's form of a key),
-- so the completing job leaves the table's row of that key alone. NULL for every other error.
ALTER TABLE job_errors ADD COLUMN key TEXT;
