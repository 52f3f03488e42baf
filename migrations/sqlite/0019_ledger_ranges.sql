-- Why: issue 17. The feed's index `(org_id, dataset, seq)` took one index entry per ledger
-- entry: 11 % of a 700k-row initial import. A batch's entries are consecutive cursors of one
-- organisation, dataset, job and time, so one row per batch says where they are:
-- `ledger_ranges` holds each batch's first and last cursor, written in the batch's transaction
-- by whoever writes entries (the batch writers, a rollback, a sync's deletions, a replace). The
-- change feed, a rollback's entries and a job's "still kept" probe find their cursors here and
-- read the entries by `seq`, the rowid. The retention sweep removes a range with its entries
-- (they share `at`). Every cursor of a range is an entry: the cursors of a batch are
-- consecutive and a range commits or rolls back with its entries.
CREATE TABLE ledger_ranges (
    org_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (org_id, dataset, last_seq)
) WITHOUT ROWID;

-- The ranges of the entries already written: runs of consecutive cursors of one organisation,
-- dataset, job and time (gaps and islands: within a run, `seq` minus its rank is constant).
INSERT INTO ledger_ranges (org_id, dataset, last_seq, first_seq, job_id, at)
SELECT org_id, dataset, max(seq), min(seq), job_id, at FROM (
    SELECT seq, org_id, dataset, job_id, at,
           seq - row_number() OVER (PARTITION BY org_id, dataset, job_id, at ORDER BY seq) AS run
    FROM ledger
) GROUP BY org_id, dataset, job_id, at, run;

DROP INDEX ledger_feed;
