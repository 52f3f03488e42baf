-- Why: multi-tenancy (issue 7, seed 002; PostgreSQL twin of sqlite/0006). Organisations own
-- users; users (admin or member) own API tokens, which may expire; every job belongs to the
-- organisation of the token that created it and records the user. The audit log says who did
-- what and when. Numbered 0006 because 0005 is taken by another branch. Existing tokens and jobs
-- move to a `default` organisation with one admin user, so an upgraded installation keeps working.

CREATE TABLE orgs (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    max_upload_bytes BIGINT,      -- NULL: the server's --max-upload-mb
    max_rows         BIGINT       -- NULL: no limit on data rows per upload
);

CREATE TABLE users (
    id         BIGSERIAL PRIMARY KEY,
    org_id     BIGINT NOT NULL REFERENCES orgs (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

INSERT INTO orgs (name) VALUES ('default');
INSERT INTO users (org_id, name, role) SELECT id, 'admin', 'admin' FROM orgs WHERE name = 'default';

-- A token acts as its user; `tokens.role` is superseded by the user's role.
ALTER TABLE tokens ADD COLUMN user_id BIGINT REFERENCES users (id);
ALTER TABLE tokens ADD COLUMN expires_at TIMESTAMPTZ;  -- NULL: never expires
UPDATE tokens SET user_id = (SELECT min(id) FROM users);

ALTER TABLE jobs ADD COLUMN org_id BIGINT REFERENCES orgs (id);
ALTER TABLE jobs ADD COLUMN user_id BIGINT REFERENCES users (id);
UPDATE jobs SET org_id = (SELECT min(id) FROM orgs), user_id = (SELECT min(id) FROM users);
ALTER TABLE jobs ALTER COLUMN org_id SET NOT NULL;
CREATE INDEX jobs_org ON jobs (org_id, id);

-- The same file may be active in two organisations at once; a duplicate is found per organisation.
DROP INDEX jobs_one_active_file;
CREATE UNIQUE INDEX jobs_one_active_file ON jobs (org_id, dataset, sha256)
    WHERE status IN ('pending', 'processing', 'paused');

CREATE TABLE audit_log (
    id       BIGSERIAL PRIMARY KEY,
    org_id   BIGINT,
    user_id  BIGINT,
    token_id BIGINT,
    action   TEXT NOT NULL,
    target   TEXT,
    detail   TEXT,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org ON audit_log (org_id, id);
