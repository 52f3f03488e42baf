//! The blob store: where uploads are kept until their job no longer needs them.
//!
//! Two modes. **Local** (the SQLite default): files live in `<data-dir>/blobs`. **Database** (the
//! PostgreSQL default): the upload is spooled to `<data-dir>/blobs` while it arrives and is checked,
//! then copied into the store (`JobStore::blob_write`) so a worker on any machine can read it; a
//! worker checks out a local copy for the run and removes it afterwards. Blob names are generated
//! here (random hex + `.upload`); a client's file name never becomes a path. Every method that may
//! touch the database is blocking.

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{JobStore, StoreError};

#[derive(Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Database mode: the store that keeps the files; `dir` then only spools them.
    database: Option<Arc<dyn JobStore>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the uploaded file is no longer available")]
    Missing,
    #[error("blob storage failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A local copy of a blob for the duration of a run; a fetched copy is removed on drop.
pub struct LocalCopy {
    path: PathBuf,
    temporary: bool,
}

impl Deref for LocalCopy {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// Files on local disk in `dir`.
    pub fn local(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            database: None,
        })
    }

    /// Files kept by `store`, spooled through `dir`.
    pub fn in_database(dir: &Path, store: Arc<dyn JobStore>) -> io::Result<Self> {
        let mut blobs = Self::local(dir)?;
        blobs.database = Some(store);
        Ok(blobs)
    }

    pub fn in_database_mode(&self) -> bool {
        self.database.is_some()
    }

    /// A fresh, unused blob name.
    pub fn new_name() -> String {
        let mut b = [0u8; 16];
        let _ = getrandom::fill(&mut b);
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{hex}.upload")
    }

    /// The local path of a blob (the file itself, or its spool); `None` for a name this store
    /// could not have made.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let ok = name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            && !name.starts_with('.');
        ok.then(|| self.dir.join(name))
    }

    /// Makes an accepted upload readable by every worker: in database mode, copies the spooled
    /// file into the store and removes the spool. Blocking.
    pub fn publish(&self, name: &str) -> Result<(), BlobError> {
        let Some(store) = &self.database else {
            return Ok(());
        };
        let path = self.path(name).ok_or(BlobError::Missing)?;
        let mut file = std::fs::File::open(&path)?;
        store.blob_write(name, &mut file)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// A local file a worker can read. Blocking.
    pub fn checkout(&self, name: &str) -> Result<LocalCopy, BlobError> {
        let path = self.path(name).ok_or(BlobError::Missing)?;
        let Some(store) = &self.database else {
            if !path.exists() {
                return Err(BlobError::Missing);
            }
            return Ok(LocalCopy {
                path,
                temporary: false,
            });
        };
        let copy = self.dir.join(format!("{}.{}.copy", name, Self::new_name()));
        let mut file = io::BufWriter::with_capacity(1024 * 1024, std::fs::File::create(&copy)?);
        let local = LocalCopy {
            path: copy,
            temporary: true,
        };
        let size = store.blob_read(name, &mut file)?;
        io::Write::flush(&mut file)?;
        if size == 0 {
            return Err(BlobError::Missing);
        }
        Ok(local)
    }

    /// Removes a blob (local file, spool and stored copy). Blocking.
    pub fn remove(&self, name: &str) {
        if let Some(p) = self.path(name)
            && let Err(e) = std::fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(blob = name, error = %e, "could not remove blob");
        }
        if let Some(store) = &self.database
            && let Err(e) = store.blob_delete(name)
        {
            tracing::warn!(blob = name, error = %e, "could not remove stored blob");
        }
    }
}
