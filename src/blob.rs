//! The blob store: where uploads are kept until their job no longer needs them.
//!
//! A local directory (`<data-dir>/blobs`). Blob names are generated here (random hex + `.upload`);
//! a client's file name never becomes a path.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// A fresh, unused blob name.
    pub fn new_name() -> String {
        let mut b = [0u8; 16];
        let _ = getrandom::fill(&mut b);
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{hex}.upload")
    }

    /// The path of a blob; `None` for a name this store could not have made.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let ok = name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            && !name.starts_with('.');
        ok.then(|| self.dir.join(name))
    }

    pub fn remove(&self, name: &str) {
        if let Some(p) = self.path(name)
            && let Err(e) = std::fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(blob = name, error = %e, "could not remove blob");
        }
    }
}
