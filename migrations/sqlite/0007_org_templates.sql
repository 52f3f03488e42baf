-- Why: mapping templates belong to an organisation (issue 7): one organisation's saved mappings
-- are neither listed, suggested nor usable in another, and two organisations may each keep a
-- template of the same name. Existing templates move to the `default` organisation, like the
-- jobs in 0006. (Dataset rows gain their organisation when their tables are prepared at start:
-- `_sluice_org`, see store/sqlite/tables.rs.)

CREATE TABLE mapping_templates_by_org (
    org_id     INTEGER NOT NULL REFERENCES orgs (id),
    dataset    TEXT NOT NULL,
    name       TEXT NOT NULL,
    mapping    TEXT NOT NULL,                -- JSON object: header → field name or null
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    used_at    TEXT,
    PRIMARY KEY (org_id, dataset, name)
);
INSERT INTO mapping_templates_by_org (org_id, dataset, name, mapping, created_at, updated_at, used_at)
    SELECT 1, dataset, name, mapping, created_at, updated_at, used_at FROM mapping_templates;
DROP TABLE mapping_templates;
ALTER TABLE mapping_templates_by_org RENAME TO mapping_templates;
