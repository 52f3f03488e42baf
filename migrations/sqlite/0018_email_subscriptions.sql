-- Why: issue 18's per-user e-mail subscriptions. A user subscribes an address to the end of
-- imports (`completed`, `failed`: their own jobs, or with scope `organisation` every import of
-- their organisation, admins only) and to sources' runs parked as `needs_mapping` (admins).
-- Their e-mails go through the same `email_deliveries` rows (planned once, claimed, retried) as
-- sources' ones, so those rows lose their NOT NULL source and run, gain the subscription, and
-- one job is mailed about once per address whoever asked for it: a unique (job_id, address).
-- SQLite cannot drop a NOT NULL, so the table is rebuilt.
CREATE TABLE email_subscriptions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id           INTEGER NOT NULL REFERENCES orgs (id),
    user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address          TEXT NOT NULL,
    on_completed     INTEGER NOT NULL,
    on_failed        INTEGER NOT NULL,
    on_needs_mapping INTEGER NOT NULL,
    scope            TEXT NOT NULL CHECK (scope IN ('mine', 'organisation')),
    created_at       TEXT NOT NULL,
    UNIQUE (user_id, address)
);
CREATE INDEX email_subscriptions_org ON email_subscriptions (org_id);

CREATE TABLE email_deliveries_0018 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id       INTEGER REFERENCES sources (id) ON DELETE CASCADE,
    run_id          INTEGER,
    subscription_id INTEGER REFERENCES email_subscriptions (id) ON DELETE CASCADE,
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
INSERT INTO email_deliveries_0018 (id, source_id, run_id, job_id, event, address, subject, body,
    state, attempts, next_attempt_ms, last_error, created_at, delivered_at)
SELECT id, source_id, run_id, job_id, event, address, subject, body, state, attempts,
    next_attempt_ms, last_error, created_at, delivered_at FROM email_deliveries;
DROP TABLE email_deliveries;
ALTER TABLE email_deliveries_0018 RENAME TO email_deliveries;
CREATE INDEX email_deliveries_due ON email_deliveries (state, next_attempt_ms);
CREATE UNIQUE INDEX email_deliveries_job_address ON email_deliveries (job_id, address)
    WHERE job_id IS NOT NULL;
CREATE INDEX email_deliveries_subscription ON email_deliveries (subscription_id)
    WHERE subscription_id IS NOT NULL;
