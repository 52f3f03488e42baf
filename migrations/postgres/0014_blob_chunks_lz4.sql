-- Why: stored files (uploads, export files, analysis reports) were compressed by PostgreSQL's
-- default pglz as they were written: about 1 s of server CPU for a 51 MB CSV, which was most of
-- a 700k-row export's time and the upload's. lz4 compresses the same chunks several times
-- faster (the CSV still halves); a server built without lz4 keeps them uncompressed instead.
-- Chunks written before keep their pglz form and read as before.
DO $$
BEGIN
    ALTER TABLE blob_chunks ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
END
$$;
