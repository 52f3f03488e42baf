-- Why: multi-tenancy (issue 7, seed 002). Organisations own users; users (admin or member) own
-- API tokens, which may expire; every job belongs to the organisation of the token that created
-- it and records the user. The audit log says who did what and when. Numbered 0006 because
-- 0005 is taken by another branch. Existing tokens and jobs move to a `default` organisation
-- with one admin user, so an upgraded installation keeps working unchanged.

CREATE TABLE orgs (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    max_upload_bytes INTEGER,     -- NULL: the server's --max-upload-mb
    max_rows         INTEGER      -- NULL: no limit on data rows per upload
);

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES orgs (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TEXT NOT NULL,
    UNIQUE (org_id, name)
);

INSERT INTO orgs (id, name, created_at) VALUES (1, 'default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
INSERT INTO users (id, org_id, name, role, created_at)
    VALUES (1, 1, 'admin', 'admin', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- A token acts as its user; `tokens.role` is superseded by the user's role.
ALTER TABLE tokens ADD COLUMN user_id INTEGER REFERENCES users (id);
ALTER TABLE tokens ADD COLUMN expires_at TEXT;       -- RFC 3339 UTC; NULL: never expires
UPDATE tokens SET user_id = 1;

-- NULL only for rows written before this migration and not backfilled: such a job is visible
-- to no organisation (isolation fails closed).
ALTER TABLE jobs ADD COLUMN org_id INTEGER REFERENCES orgs (id);
ALTER TABLE jobs ADD COLUMN user_id INTEGER REFERENCES users (id);
UPDATE jobs SET org_id = 1, user_id = 1;
CREATE INDEX jobs_org ON jobs (org_id, id);

-- The same file may be active in two organisations at once; a duplicate is found per organisation.
DROP INDEX jobs_one_active_file;
CREATE UNIQUE INDEX jobs_one_active_file ON jobs (org_id, dataset, sha256)
    WHERE status IN ('pending', 'processing', 'paused');

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id   INTEGER,             -- the organisation the action concerns
    user_id  INTEGER,             -- who acted; NULL: the command line on the server
    token_id INTEGER,
    action   TEXT NOT NULL,       -- upload, cancel, pause, resume, retry, delete, token.create, …
    target   TEXT,                -- e.g. `job:42`, `token:7`
    detail   TEXT,
    at       TEXT NOT NULL
);
CREATE INDEX audit_log_org ON audit_log (org_id, id);
