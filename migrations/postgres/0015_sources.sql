-- Why: scheduled imports from where the files live (issue 18; PostgreSQL twin of sqlite/0015). `sources` holds what an admin
-- configured: the dataset, the import options, a schedule (interval or cron with a time zone),
-- the kind-specific settings (`config`, returned by the API) and the secrets (`secrets`: header
-- values, passwords; written, never returned). `state` is what the source remembers between runs
-- (the files seen with their size and mtime for the stability window, a URL's ETag and
-- Last-Modified). `next_due_at` is claimed with a guarded UPDATE so one node fires each slot.
-- `source_runs` records every run; UNIQUE (source_id, run_key) is the second guard: the key of
-- a scheduled run is its slot, so a slot is fired once however many nodes see it due.

CREATE TABLE sources (
    id          BIGSERIAL PRIMARY KEY,
    org_id      BIGINT NOT NULL REFERENCES orgs (id),
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
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_by  BIGINT REFERENCES tokens (id),
    user_id     BIGINT REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    next_due_at TIMESTAMPTZ,
    UNIQUE (org_id, name)
);

CREATE INDEX sources_due ON sources (next_due_at) WHERE enabled;

CREATE TABLE source_runs (
    id            BIGSERIAL PRIMARY KEY,
    source_id     BIGINT NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    run_key       TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    scheduled_for TIMESTAMPTZ,
    at            TIMESTAMPTZ NOT NULL,
    outcome       TEXT CHECK (outcome IN ('imported', 'skipped', 'unchanged', 'needs_mapping', 'failed')),
    file          TEXT,
    sha256        TEXT,
    job_id        BIGINT,
    reason        TEXT,
    finished_at   TIMESTAMPTZ,
    notified      BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (source_id, run_key)
);

CREATE INDEX source_runs_file ON source_runs (source_id, sha256);

-- E-mails to a source's `notify` addresses: one per run and address, planned when a run ends
-- `needs_mapping` or its job ends; sent and retried like webhook deliveries.
CREATE INDEX source_runs_unnotified ON source_runs (id) WHERE NOT notified;

CREATE TABLE email_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    source_id       BIGINT NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    run_id          BIGINT NOT NULL,
    job_id          BIGINT,
    event           TEXT NOT NULL CHECK (event IN ('completed', 'failed', 'needs_mapping')),
    address         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (run_id, address)
);

CREATE INDEX email_deliveries_due ON email_deliveries (state, next_attempt_ms);
