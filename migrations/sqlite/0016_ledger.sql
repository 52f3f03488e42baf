-- Why: every import reversible and observable (issue 16). The ledger holds one entry for every
-- row an import created, updated or deleted, written by the batch writer in the transaction of
-- the change itself: the job (a chunk's parent), the organisation, the dataset, the row's key,
-- the operation, the values written (`new`) and the values it replaced (`old`), as JSON text.
-- `seq` is the change feed's cursor: AUTOINCREMENT so that a cursor is never handed out twice,
-- even after the retention sweep has emptied the table. Unchanged rows write no entry. No
-- foreign key to jobs: entries outlive a deleted job until `--retain-ledger`.

CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('created', 'updated', 'deleted')),
    key TEXT NOT NULL,
    old TEXT,
    new TEXT,
    at TEXT NOT NULL
);
CREATE INDEX ledger_feed ON ledger (org_id, dataset, seq);
CREATE INDEX ledger_job ON ledger (job_id, seq);
