-- Why: PostgreSQL's migration 0014 changes how stored files are compressed there. SQLite keeps
-- stored files on disk, never in the database: nothing changes here; the number is kept so both
-- backends count their migrations alike.

