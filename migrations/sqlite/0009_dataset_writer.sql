-- Why: jobs into one dataset of one organisation run one after another (issue 12). Every claim
-- asks whether another top-level job of the candidate's organisation and dataset is running or
-- waiting; this index answers that with one probe per candidate.

CREATE INDEX jobs_dataset_writer ON jobs (org_id, dataset, status, id) WHERE parent_id IS NULL;
