-- Why: uploads are now stored in pieces while they arrive (`blob::UploadCopy`), beside the
-- receiving; lz4 was then 41 % of the storing backend's CPU, on a two-core machine the one
-- thing the upload waited for. Stored uncompressed, the 51 MB benchmark upload answers in
-- 0.26–0.31 s instead of 0.36–0.39 s (BENCHMARKS.md, issue 17, session 10). The cost: stored
-- files take about twice the space (the CSV halved under lz4) and twice the WAL while they
-- are kept (until `--retain-files`). Chunks written before keep their form and read as before.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
