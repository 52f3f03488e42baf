-- Why: issue 18's per-user e-mail subscriptions. A user subscribes an address to the end of
-- imports (`completed`, `failed`: their own jobs, or with scope `organisation` every import of
-- their organisation, admins only) and to sources' runs parked as `needs_mapping` (admins).
-- Their e-mails go through the same `email_deliveries` rows (planned once, claimed, retried) as
-- sources' ones, so those rows lose their NOT NULL source and run, gain the subscription, and
-- one job is mailed about once per address whoever asked for it: a unique (job_id, address).
CREATE TABLE email_subscriptions (
    id               BIGSERIAL PRIMARY KEY,
    org_id           BIGINT NOT NULL REFERENCES orgs (id),
    user_id          BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address          TEXT NOT NULL,
    on_completed     BOOLEAN NOT NULL,
    on_failed        BOOLEAN NOT NULL,
    on_needs_mapping BOOLEAN NOT NULL,
    scope            TEXT NOT NULL CHECK (scope IN ('mine', 'organisation')),
    created_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (user_id, address)
);
CREATE INDEX email_subscriptions_org ON email_subscriptions (org_id);

ALTER TABLE email_deliveries ALTER COLUMN source_id DROP NOT NULL;
ALTER TABLE email_deliveries ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE email_deliveries ADD COLUMN subscription_id BIGINT
    REFERENCES email_subscriptions (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX email_deliveries_job_address ON email_deliveries (job_id, address)
    WHERE job_id IS NOT NULL;
CREATE INDEX email_deliveries_subscription ON email_deliveries (subscription_id)
    WHERE subscription_id IS NOT NULL;
