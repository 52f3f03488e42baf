-- Why: uploaded files must be readable by workers on other machines without a shared disk, so on
-- PostgreSQL they are kept in the database, in 1 MiB chunks (bytea rows stream in bounded memory;
-- large objects would need their own cleanup).

CREATE TABLE blob_chunks (
    blob TEXT NOT NULL,
    seq  INT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob, seq)
);
