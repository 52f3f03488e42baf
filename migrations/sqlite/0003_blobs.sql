-- Why: keeps the numbering aligned with postgres/0003_blobs. The embedded SQLite store serves one
-- machine, whose uploads stay in <data-dir>/blobs; nothing to create.
SELECT 1;
