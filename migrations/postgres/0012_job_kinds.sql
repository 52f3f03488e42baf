-- Why: files that come back out (issue 15). A job is an `import` (a file into a dataset), an
-- `export` (a dataset's rows into a file) or an `analysis` (a dry run: a file read and validated
-- against the live table without writing a row). `params` holds what the job was asked to do
-- beyond the import's columns (JSON: an export's format, columns and filters; NULL for imports),
-- `result` what it produced (JSON: an export's file, an analysis's summary; written by the
-- worker under its lease), and `analysis_of` links an import started from an analysis
-- (`POST /api/v1/import/{id}/run`) to it.

ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'import' CHECK (kind IN ('import', 'export', 'analysis'));
ALTER TABLE jobs ADD COLUMN params TEXT;
ALTER TABLE jobs ADD COLUMN result TEXT;
ALTER TABLE jobs ADD COLUMN analysis_of BIGINT REFERENCES jobs (id) ON DELETE SET NULL;
