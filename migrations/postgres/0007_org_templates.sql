-- Why: mapping templates belong to an organisation (issue 7): one organisation's saved mappings
-- are neither listed, suggested nor usable in another, and two organisations may each keep a
-- template of the same name. Existing templates move to the `default` organisation, like the
-- jobs in 0006. (Dataset rows gain their organisation when their tables are prepared at start:
-- `_sluice_org`, see store/postgres/tables.rs.)

ALTER TABLE mapping_templates ADD COLUMN org_id BIGINT NOT NULL DEFAULT 1 REFERENCES orgs (id);
ALTER TABLE mapping_templates ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE mapping_templates DROP CONSTRAINT mapping_templates_pkey,
    ADD PRIMARY KEY (org_id, dataset, name);
