//! Uploaded files kept in PostgreSQL as 1 MiB `bytea` chunks, so that workers on any machine can
//! read them. Written and read as streams: never a whole file in memory.

use std::io::{Read, Write};

use postgres::fallible_iterator::FallibleIterator;

use super::{Postgres, pg_err};
use crate::store::{StoreError, StoreResult};

const CHUNK: usize = 1024 * 1024;

/// One piece of a stored file.
const INSERT_PIECE: &str = "INSERT INTO blob_chunks (blob, seq, data) VALUES ($1, $2, $3)";

impl Postgres {
    pub(super) fn write_blob(&self, name: &str, from: &mut dyn Read) -> StoreResult<u64> {
        let mut size = 0u64;
        {
            let mut pieces = std::iter::from_fn(|| {
                let mut buf = vec![0u8; CHUNK];
                match read_full(from, &mut buf) {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        size += n as u64;
                        Some(Ok((0, buf)))
                    }
                    Err(e) => Some(Err(StoreError::Other(format!("reading upload: {e}")))),
                }
            });
            self.write_blobs(&[name.to_string()], &mut pieces)?;
        }
        Ok(size)
    }

    /// Files `names` from pieces of any of them (see [`crate::store::JobStore::blob_write_many`]),
    /// in one transaction.
    pub(super) fn write_blobs(
        &self,
        names: &[String],
        pieces: &mut dyn Iterator<Item = StoreResult<(usize, Vec<u8>)>>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        tx.execute("DELETE FROM blob_chunks WHERE blob = ANY($1)", &[&names])
            .map_err(pg_err)?;
        let insert = tx.prepare(INSERT_PIECE).map_err(pg_err)?;
        let mut seqs = vec![0i32; names.len()];
        for piece in pieces {
            let (i, data) = piece?;
            let (Some(name), Some(seq)) = (names.get(i), seqs.get_mut(i)) else {
                return Err(StoreError::Other(format!("no stored file {i} in this set")));
            };
            tx.execute(&insert, &[name, seq, &data]).map_err(pg_err)?;
            *seq += 1;
        }
        tx.commit().map_err(pg_err)
    }

    /// One piece of a file that is still arriving, committed without waiting for the disk
    /// (see [`crate::store::JobStore::blob_append`]).
    pub(super) fn append_blob(&self, name: &str, seq: i32, data: &[u8]) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg_err)?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .map_err(pg_err)?;
        tx.execute(INSERT_PIECE, &[&name, &seq, &data])
            .map_err(pg_err)?;
        tx.commit().map_err(pg_err)
    }

    pub(super) fn blob_bytes(&self, name: &str) -> StoreResult<u64> {
        // The sizes come from the TOAST pointers: nothing is read back.
        let row = self
            .conn()?
            .query_one(
                "SELECT coalesce(sum(octet_length(data)), 0)::int8 FROM blob_chunks WHERE blob = $1",
                &[&name],
            )
            .map_err(pg_err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(super) fn read_blob(&self, name: &str, to: &mut dyn Write) -> StoreResult<u64> {
        let mut conn = self.conn()?;
        let mut rows = conn
            .query_raw(
                "SELECT data FROM blob_chunks WHERE blob = $1 ORDER BY seq",
                [&name as &(dyn postgres::types::ToSql + Sync)],
            )
            .map_err(pg_err)?;
        let mut size = 0u64;
        while let Some(row) = rows.next().map_err(pg_err)? {
            let data: &[u8] = row.get(0);
            to.write_all(data)
                .map_err(|e| StoreError::Unavailable(format!("writing a local copy: {e}")))?;
            size += data.len() as u64;
        }
        Ok(size)
    }

    /// Stored blobs whose newest piece was stored before `before` (an upload still arriving
    /// keeps adding pieces) that no job references (`blob_deleted_at` unset).
    pub(super) fn orphan_blobs(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<String>> {
        let rows = self
            .conn()?
            .query(
                "SELECT b.blob FROM blob_chunks b GROUP BY b.blob HAVING max(b.created_at) < $1 \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.blob_deleted_at IS NULL \
                 AND (j.blob = b.blob OR (j.kind = 'analysis' AND b.blob LIKE \
                 replace(j.blob, '.upload', '') || '.a' || j.id || '.report.%')))",
                &[&before],
            )
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) fn delete_blob(&self, name: &str) -> StoreResult<()> {
        self.conn()?
            .execute("DELETE FROM blob_chunks WHERE blob = $1", &[&name])
            .map_err(pg_err)?;
        Ok(())
    }
}

/// Reads until `buf` is full or the input ends.
fn read_full(from: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
