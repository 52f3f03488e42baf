-- Why: job priorities and fairness between organisations (issue 14). A job's `priority` (1 high,
-- 0 normal, -1 low; chunk jobs copy their parent's) orders the claim first; among equals, the
-- organisation with the fewest jobs running goes first, and `--org-max-running` caps how many
-- one organisation may run. Every claim counts, per candidate, its organisation's jobs that are
-- `processing` under a live lease: `jobs_org_running` answers that with one range probe.

ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0 CHECK (priority IN (-1, 0, 1));

CREATE INDEX jobs_org_running ON jobs (org_id, status, lease_expires_ms);
