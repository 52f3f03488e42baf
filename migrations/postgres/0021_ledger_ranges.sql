-- Why: issue 17. The feed's index `(org_id, dataset, seq)` took one index entry (one WAL
-- record) per ledger entry: 0.85 s of a 700k-entry COPY that took 1.55 s without it. A batch's
-- entries are consecutive cursors of one organisation, dataset, job and time (reserved under
-- `LEDGER_LOCK`), so one row per batch says where they are: `ledger_ranges` holds each batch's
-- first and last cursor, written in the batch's transaction by whoever writes entries (the
-- batch writers, a rollback, a sync's deletions, a replace). The change feed, a rollback's
-- entries and a job's "still kept" probe find their cursors here and read the entries by `seq`
-- through a BRIN index: entries are appended in `seq` order, so a block range's minimum and
-- maximum find them, and the index costs nearly nothing to keep up. Block ranges appended since
-- the last summary are scanned whole by every read, so whoever commits entries summarises the
-- new ones right after (`brin_summarize_new_values`, best effort; VACUUM does it too).
-- `autosummarize` stays off: it queues a request per block range, 600 for a 700k-row import,
-- and the queue holds 256 (the rest are logged as lost). The retention sweep removes a range
-- with its entries (they share `at`). Every cursor of a range is an entry: a batch's cursors
-- are consecutive and a range commits or rolls back with them.
-- Built under the ledger lock (`ledger::LEDGER_LOCK`, 0x5111CE16), so that no batch commits
-- entries while the ranges of those before are built.
SELECT pg_advisory_xact_lock(1360121366);

CREATE TABLE ledger_ranges (
    org_id BIGINT NOT NULL,
    dataset TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, dataset, last_seq)
);

-- The ranges of the entries already written: runs of consecutive cursors of one organisation,
-- dataset, job and time (gaps and islands: within a run, `seq` minus its rank is constant).
INSERT INTO ledger_ranges (org_id, dataset, last_seq, first_seq, job_id, at)
SELECT org_id, dataset, max(seq), min(seq), job_id, at FROM (
    SELECT seq, org_id, dataset, job_id, at,
           seq - row_number() OVER (PARTITION BY org_id, dataset, job_id, at ORDER BY seq) AS run
    FROM ledger
) runs GROUP BY org_id, dataset, job_id, at, run;

DROP INDEX ledger_feed;
CREATE INDEX ledger_seq ON ledger USING brin (seq) WITH (pages_per_range = 16);
