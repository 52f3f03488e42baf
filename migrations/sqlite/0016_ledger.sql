-- Why: every import reversible and observable (issue 16). The ledger holds one entry for every
-- row an import created, updated or deleted, written by the batch writer in the transaction of
-- the change itself: the job (a chunk's parent), the organisation, the dataset, the row's key,
-- the operation and, for an update or a deletion, the values it replaced (`old`), as JSON text.
-- The values written are not kept: they are the table's (the change feed reads a row's values
-- from the table), and holding them doubled what an import wrote.
-- `seq` is the change feed's cursor: AUTOINCREMENT so that a cursor is never handed out twice,
-- even after the retention sweep has emptied the table. Unchanged rows write no entry. No
-- foreign key to jobs: entries outlive a deleted job until `--retain-ledger`.

CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    -- Written as ORs: SQLite evaluates `op IN (…)` in a CHECK through a temporary index built for
    -- every row, which cost 0.6 s of a 700k-row import.
    op TEXT NOT NULL CHECK (op = 'created' OR op = 'updated' OR op = 'deleted'),
    key TEXT NOT NULL,
    old TEXT,
    at TEXT NOT NULL
);
CREATE INDEX ledger_feed ON ledger (org_id, dataset, seq);

-- Rollback jobs (`kind = 'rollback'`, what they undo in `params.rollbackOf`): the job a rollback
-- undid names it (`rolled_back_by`, set once, in the transaction that creates the rollback, so a
-- second rollback of the same job is refused); `deleted_count` counts rows a job deleted (a
-- rollback removing rows an import created; sync imports later); `ledger_cursor` is a rollback's
-- checkpoint in the ledger (the last entry it has undone), moved in each batch's transaction.
-- SQLite cannot change a CHECK constraint in place: the kind column is rebuilt around its values.
DROP INDEX jobs_one_active_file;
ALTER TABLE jobs RENAME COLUMN kind TO kind_before_0016;
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'import'
    CHECK (kind IN ('import', 'export', 'analysis', 'rollback'));
UPDATE jobs SET kind = kind_before_0016;
ALTER TABLE jobs DROP COLUMN kind_before_0016;
CREATE UNIQUE INDEX jobs_one_active_file ON jobs (org_id, dataset, kind, sha256)
    WHERE status IN ('pending', 'processing', 'paused') AND sha256 <> '';
ALTER TABLE jobs ADD COLUMN rolled_back_by INTEGER REFERENCES jobs (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN deleted_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN ledger_cursor INTEGER;
-- A job's entries are the ones of its organisation and dataset between `ledger_first` and
-- `ledger_last` (one job writes a dataset of an organisation at a time), set by each batch that
-- writes entries: the change feed's index serves a job's range and a rollback, and no index on
-- `job_id` has to be kept up by every import (it cost a tenth of an import's time).
ALTER TABLE jobs ADD COLUMN ledger_first INTEGER;
ALTER TABLE jobs ADD COLUMN ledger_last INTEGER;
