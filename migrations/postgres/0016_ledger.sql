-- Why: every import reversible and observable (issue 16). The ledger holds one entry for every
-- row an import created, updated or deleted, written by the batch writer in the transaction of
-- the change itself: the job (a chunk's parent), the organisation, the dataset, the row's key,
-- the operation and, for an update or a deletion, the values it replaced (`old`), as JSON text.
-- The values written are not kept: they are the table's (the change feed reads a row's values
-- from the table), and holding them doubled what an import wrote.
-- `seq` is the change feed's cursor. Writers take the advisory lock `LEDGER_LOCK` just before
-- they insert entries and hold it to their commit, so entries become visible in `seq` order: a
-- reader that has seen `seq` N never later finds a smaller one committed (a gap is a rolled-back
-- batch, for good). Unchanged rows write no entry. No foreign key to jobs: entries outlive a
-- deleted job until `--retain-ledger`.

CREATE TABLE ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    dataset TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('created', 'updated', 'deleted')),
    key TEXT NOT NULL,
    old TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_feed ON ledger (org_id, dataset, seq);

-- Rollback jobs (`kind = 'rollback'`, what they undo in `params.rollbackOf`): the job a rollback
-- undid names it (`rolled_back_by`, set once, in the transaction that creates the rollback, so a
-- second rollback of the same job is refused); `deleted_count` counts rows a job deleted (a
-- rollback removing rows an import created; sync imports later); `ledger_cursor` is a rollback's
-- checkpoint in the ledger (the last entry it has undone), moved in each batch's transaction.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('import', 'export', 'analysis', 'rollback'));
ALTER TABLE jobs ADD COLUMN rolled_back_by BIGINT REFERENCES jobs (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN deleted_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN ledger_cursor BIGINT;
-- A job's entries are the ones of its organisation and dataset between `ledger_first` and
-- `ledger_last` (one job writes a dataset of an organisation at a time), set by each batch that
-- writes entries: the change feed's index serves a job's range and a rollback, and no index on
-- `job_id` has to be kept up by every import (it cost a tenth of an import's time).
ALTER TABLE jobs ADD COLUMN ledger_first BIGINT;
ALTER TABLE jobs ADD COLUMN ledger_last BIGINT;
