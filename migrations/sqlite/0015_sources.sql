-- Why: scheduled imports from where the files live (issue 18). `sources` holds what an admin
-- configured: the dataset, the import options, a schedule (interval or cron with a time zone),
-- the kind-specific settings (`config`, returned by the API) and the secrets (`secrets`: header
-- values, passwords; written, never returned). `state` is what the source remembers between runs
-- (the files seen with their size and mtime for the stability window, a URL's ETag and
-- Last-Modified). `next_due_at` is claimed with a guarded UPDATE so one node fires each slot.
-- `source_runs` records every run; UNIQUE (source_id, run_key) is the second guard: the key of
-- a scheduled run is its slot, so a slot is fired once however many nodes see it due.

CREATE TABLE sources (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      INTEGER NOT NULL REFERENCES orgs (id),
    name        TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('directory', 'url', 'sftp')),
    schedule    TEXT NOT NULL,                -- JSON: {"every": "10m"} or {"cron", "timezone"}
    pick        TEXT NOT NULL CHECK (pick IN ('latest', 'all-new')),
    options     TEXT NOT NULL,                -- JSON: import options (mode, template, …)
    notify      TEXT NOT NULL,                -- JSON array of addresses
    config      TEXT NOT NULL,                -- JSON: kind-specific settings, no secrets
    secrets     TEXT NOT NULL,                -- JSON: never returned by the API
    state       TEXT NOT NULL DEFAULT '{}',   -- JSON: what the runs remember
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_by  INTEGER REFERENCES tokens (id),
    user_id     INTEGER REFERENCES users (id),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    next_due_at TEXT,
    UNIQUE (org_id, name)
);

CREATE INDEX sources_due ON sources (next_due_at) WHERE enabled = 1;

CREATE TABLE source_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id     INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    run_key       TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    scheduled_for TEXT,
    at            TEXT NOT NULL,
    outcome       TEXT CHECK (outcome IN ('imported', 'skipped', 'unchanged', 'needs_mapping', 'failed')),
    file          TEXT,
    sha256        TEXT,
    job_id        INTEGER,
    reason        TEXT,
    finished_at   TEXT,
    notified      INTEGER NOT NULL DEFAULT 0,   -- its e-mails are planned (or none are due)
    UNIQUE (source_id, run_key)
);

CREATE INDEX source_runs_file ON source_runs (source_id, sha256);

-- E-mails to a source's `notify` addresses: one per run and address, planned when a run ends
-- `needs_mapping` or its job ends; sent and retried like webhook deliveries.
CREATE INDEX source_runs_unnotified ON source_runs (id) WHERE notified = 0;

CREATE TABLE email_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id       INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    run_id          INTEGER NOT NULL,
    job_id          INTEGER,
    event           TEXT NOT NULL CHECK (event IN ('completed', 'failed', 'needs_mapping')),
    address         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    UNIQUE (run_id, address)
);

CREATE INDEX email_deliveries_due ON email_deliveries (state, next_attempt_ms);
