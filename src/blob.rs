//! The blob store: where uploads are kept until their job no longer needs them.
//!
//! Two modes. **Local** (the SQLite default): files live in `<data-dir>/blobs`. **Database** (the
//! PostgreSQL default): the upload is spooled to `<data-dir>/blobs` while it arrives and is checked,
//! then copied into the store (`JobStore::blob_write`) so a worker on any machine can read it; a
//! worker checks out a local copy for the run and removes it afterwards. A split's chunk files are
//! written by [`BlobStore::create_many`]: in database mode straight into the store while they
//! are written, never to local disk. Blob names are generated here (random hex + `.upload`); a
//! client's file name never becomes a path. Every method that may touch the database is
//! blocking.
//!
//! Files being written carry their writer in the name (`<blob>.<owner>.part` while an upload or
//! a preview arrives, `<blob>.<owner>.<random>.copy` for a worker's local copy,
//! `<blob>.<owner>.kept` for a stored upload's spool kept for this process's workers, taken by
//! the checkout of the worker that runs its job or removed after `KEPT_FOR`; `owner` is
//! `p<pid>h<host>`, `host` a hash of the boot id and the PID namespace), so that
//! [`BlobStore::sweep_orphans`] can tell an abandoned file from one that another process on the
//! same data directory is writing right now. An upload becomes `<blob>` (renamed after fsync)
//! only once it has arrived whole.

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::store::{JobStore, StoreError};

/// When [`BlobStore::sweep_orphans`] removes a file nobody needs any more.
#[derive(Debug, Clone, Copy)]
pub struct OrphanRules {
    /// A `.part` file of a process that cannot be seen (another machine or PID namespace)
    /// counts as abandoned once it has not been written for this long (twice the body-rate
    /// window: a live upload writes at least every window, or is cut off).
    pub stale: Duration,
    /// A finished blob (and, in database mode, a stored one) that no job references is removed
    /// once it is this old, which covers the time between writing it and inserting its job.
    pub grace: Duration,
}

/// What one orphan sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub partial: usize,
    pub unreferenced: usize,
    pub stored: usize,
}

/// This process in temp file names: `p<pid>h<host>`.
fn owner_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| format!("p{}h{}", std::process::id(), host_tag()))
}

/// This machine and PID namespace: a short hash of the boot id and the namespace's inode, so
/// that pids are only compared between processes that see the same pids. Empty where unknown
/// (not Linux), which makes every owner invisible: only staleness counts then.
fn host_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
        let ns = std::fs::read_link("/proc/self/ns/pid");
        match (boot, ns) {
            (Ok(boot), Ok(ns)) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(format!("{}|{}", boot.trim(), ns.display()));
                digest[..4].iter().map(|b| format!("{b:02x}")).collect()
            }
            _ => String::new(),
        }
    })
}

/// Whether the writer named by a file's owner tag is known to be gone: a process of this
/// machine and PID namespace that no longer runs.
fn owner_gone(tag: &str) -> bool {
    let Some((pid, host)) = tag.strip_prefix('p').and_then(|t| t.split_once('h')) else {
        return false;
    };
    if host.is_empty() || host != host_tag() || pid.is_empty() {
        return false;
    }
    !Path::new("/proc").join(pid).exists()
}

/// The owner segment of a temp file's name (`p…h…`; blob names are hex, so never start with `p`).
fn owner_of(file_name: &str) -> Option<&str> {
    file_name
        .split('.')
        .find(|s| s.starts_with('p') && s.contains('h'))
}

/// Time since the file was last written (zero when unknown, so it is kept).
fn idle(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default()
}

#[derive(Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Database mode: the store that keeps the files; `dir` then only spools them.
    database: Option<Arc<dyn JobStore>>,
    /// Database mode, in a process that runs jobs: an upload's spool is kept after it was
    /// stored ([`BlobStore::publish`]), so that a worker of this process that takes the job
    /// runs on it instead of fetching the file again ([`BlobStore::checkout`]).
    keep_uploads: bool,
}

/// How long an upload's kept spool waits for a worker of its process to take the job; then
/// the orphan sweep removes it (a worker that takes the job later fetches the stored copy).
const KEPT_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the uploaded file is no longer available")]
    Missing,
    #[error("blob storage failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Bytes of a new blob handed to the store's writer at a time (see [`BlobStore::create_many`]).
const PIECE: usize = 128 * 1024;

/// A piece for the store's writer thread of [`BlobStore::create_many`].
enum Piece {
    Data(usize, Vec<u8>),
    /// Every blob was written whole: commit them.
    Done,
}

/// One of the blobs [`BlobStore::create_many`] writes.
pub struct NewBlob {
    sink: Sink,
    size: u64,
}

/// Where a [`NewBlob`]'s bytes go: a local file, or (database mode) pieces to the store.
enum Sink {
    File(io::BufWriter<std::fs::File>),
    Streamed {
        index: usize,
        piece: Vec<u8>,
        to: std::sync::mpsc::SyncSender<Piece>,
    },
}

fn store_stopped() -> io::Error {
    io::Error::other("the database stopped taking the file")
}

impl io::Write for NewBlob {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::File(file) => file.write(data)?,
            Sink::Streamed { index, piece, to } => {
                let n = data.len().min(PIECE - piece.len());
                piece.extend_from_slice(&data[..n]);
                if piece.len() == PIECE {
                    let full = std::mem::replace(piece, Vec::with_capacity(PIECE));
                    to.send(Piece::Data(*index, full))
                        .map_err(|_| store_stopped())?;
                }
                n
            }
        };
        self.size += n as u64;
        Ok(n)
    }

    /// A file's buffer goes to the file; a stream's last piece goes when the set is finished.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::File(file) => file.flush(),
            Sink::Streamed { .. } => Ok(()),
        }
    }
}

/// Bytes of an arriving upload stored as one piece by [`UploadCopy`].
const UPLOAD_PIECE: usize = 1024 * 1024;

/// Pieces of one upload being stored at once by [`UploadCopy`], each on a connection of its own.
const UPLOAD_IN_FLIGHT: usize = 2;

type Storing = tokio::task::JoinHandle<Result<(), StoreError>>;

/// An upload copied into the store while it arrives (database mode): each full piece is
/// stored on a blocking thread while the next one is received, in a transaction of its own
/// ([`JobStore::blob_append`]: no wait for the disk — the job's insert makes it durable — and
/// no connection held while the client is waited for), so the database's work runs beside the
/// receiving instead of after it. At most [`UPLOAD_IN_FLIGHT`] pieces in flight (the database's
/// storing of a piece costs more CPU than its receiving: two backends share it) and one being
/// filled. Dropped without [`UploadCopy::finish`], what it stored is removed.
pub struct UploadCopy {
    store: Arc<dyn JobStore>,
    name: String,
    piece: Vec<u8>,
    seq: i32,
    pending: std::collections::VecDeque<Storing>,
    finished: bool,
}

impl UploadCopy {
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        while !data.is_empty() {
            let n = (UPLOAD_PIECE - self.piece.len()).min(data.len());
            self.piece.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.piece.len() == UPLOAD_PIECE {
                self.send().await?;
            }
        }
        Ok(())
    }

    /// Stores the last piece and waits for every piece to be stored.
    pub async fn finish(mut self) -> Result<(), BlobError> {
        if !self.piece.is_empty() {
            self.send().await?;
        }
        self.wait().await?;
        self.finished = true;
        Ok(())
    }

    /// Removes what was stored, once a piece still being stored has landed.
    pub async fn discard(mut self) {
        self.finished = true;
        let (store, name) = (self.store.clone(), std::mem::take(&mut self.name));
        remove_pieces(store, name, std::mem::take(&mut self.pending)).await;
    }

    /// Starts storing the filled piece once fewer than [`UPLOAD_IN_FLIGHT`] are being stored.
    async fn send(&mut self) -> Result<(), BlobError> {
        while self.pending.len() >= UPLOAD_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(UPLOAD_PIECE));
        let (store, name, seq) = (self.store.clone(), self.name.clone(), self.seq);
        self.seq += 1;
        self.pending.push_back(tokio::task::spawn_blocking(move || {
            store.blob_append(&name, seq, &piece)
        }));
        Ok(())
    }

    /// Waits for every piece being stored.
    async fn wait(&mut self) -> Result<(), BlobError> {
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), BlobError> {
        if let Some(pending) = self.pending.pop_front() {
            pending
                .await
                .map_err(|e| StoreError::Other(format!("storing a piece of the upload: {e}")))??;
        }
        Ok(())
    }
}

impl Drop for UploadCopy {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (store, name, pending) = (
            self.store.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.pending),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(remove_pieces(store, name, pending));
        }
    }
}

/// Removes the stored pieces of upload `name` once `pending` (pieces still being stored) have
/// landed, so that none is left behind.
async fn remove_pieces(
    store: Arc<dyn JobStore>,
    name: String,
    pending: std::collections::VecDeque<Storing>,
) {
    for storing in pending {
        let _ = storing.await;
    }
    let _ = tokio::task::spawn_blocking(move || store.blob_delete(&name)).await;
}

/// Why [`BlobStore::create_many`] failed: the caller's writing, or the storing.
#[derive(Debug)]
pub enum ManyError<E> {
    Fill(E),
    Blob(BlobError),
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
            keep_uploads: false,
        })
    }

    /// Files kept by `store`, spooled through `dir`.
    pub fn in_database(dir: &Path, store: Arc<dyn JobStore>) -> io::Result<Self> {
        let mut blobs = Self::local(dir)?;
        blobs.database = Some(store);
        Ok(blobs)
    }

    /// Keeps each upload's spool for this process's workers (see `keep_uploads`): for a
    /// process that runs jobs.
    pub fn keeping_uploads(mut self, keep: bool) -> Self {
        self.keep_uploads = keep && self.database.is_some();
        self
    }

    /// Where this process keeps upload `name`'s spool after storing it.
    fn kept_path(&self, name: &str) -> Option<PathBuf> {
        self.path(name)
            .map(|_| self.dir.join(format!("{name}.{}.kept", owner_tag())))
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

    /// Whether a new upload could be stored now: writes, syncs and removes a small file where
    /// uploads arrive (a full or read-only disk fails here). Database mode also needs the
    /// database, which the caller checks.
    pub fn probe_writable(&self) -> io::Result<()> {
        use std::io::Write;
        let path = self
            .temp_path(&Self::new_name())
            .ok_or_else(|| io::Error::other("invalid blob name"))?;
        let written = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&[0u8; 512])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        written
    }

    /// Where this process writes blob `name` while it arrives (see [`BlobStore::finish`]).
    pub fn temp_path(&self, name: &str) -> Option<PathBuf> {
        self.path(name)
            .map(|_| self.dir.join(format!("{name}.{}.part", owner_tag())))
    }

    /// Turns the arrived (and fsynced) temp file of `name` into the blob itself, durably. In
    /// database mode the file is only a spool, neither synced nor renamed durably: what must
    /// survive a crash is the store's copy ([`BlobStore::publish`], committed before the job
    /// that reads it); a spool left by a crash is an orphan for [`BlobStore::sweep_orphans`].
    pub fn finish(&self, name: &str) -> io::Result<()> {
        let (Some(temp), Some(path)) = (self.temp_path(name), self.path(name)) else {
            return Err(io::Error::other("invalid blob name"));
        };
        std::fs::rename(&temp, &path)?;
        #[cfg(unix)]
        if !self.in_database_mode() {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes upload files that nothing needs (see [`OrphanRules`]): `.part` and `.copy` files
    /// whose writer is gone (a `.part` file also when stale, a `.copy` of an unknown owner only
    /// after `grace`), blobs in the directory that no job references, and (database mode)
    /// stored blobs that no job references. Blocking.
    pub fn sweep_orphans(
        &self,
        store: &dyn JobStore,
        rules: OrphanRules,
    ) -> Result<Swept, BlobError> {
        let mut swept = Swept::default();
        let mut finished = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let owner = owner_of(&name);
            let abandoned = if name.ends_with(".part") {
                owner.is_some_and(owner_gone) || idle(&meta) > rules.stale
            } else if name.ends_with(".copy") {
                match owner {
                    Some(owner) => owner_gone(owner),
                    None => idle(&meta) > rules.grace,
                }
            } else if name.ends_with(".kept") {
                owner.is_none_or(owner_gone) || idle(&meta) > KEPT_FOR.min(rules.grace)
            } else {
                if name.ends_with(".upload")
                    && self.path(&name).is_some()
                    && idle(&meta) > rules.grace
                {
                    finished.push(name);
                }
                continue;
            };
            if abandoned && remove_quietly(&entry.path()) {
                tracing::info!(file = name, "removed an abandoned partial upload file");
                swept.partial += 1;
            }
        }
        for batch in finished.chunks(500) {
            for name in store.blobs_unreferenced(batch)? {
                if let Some(path) = self.path(&name)
                    && idle(&std::fs::metadata(&path)?) > rules.grace
                    && remove_quietly(&path)
                {
                    tracing::info!(blob = name, "removed an upload file that no job references");
                    swept.unreferenced += 1;
                }
            }
        }
        if self.database.is_some() {
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(rules.grace).unwrap_or(chrono::Duration::MAX);
            for name in store.blob_orphans(before)? {
                store.blob_delete(&name)?;
                tracing::info!(
                    blob = name,
                    "removed a stored upload that no job references"
                );
                swept.stored += 1;
            }
        }
        Ok(swept)
    }

    /// Makes an accepted upload readable by every worker: in database mode, makes sure the
    /// store holds the spooled file whole — an upload copied while it arrived
    /// ([`BlobStore::upload_copy`]) only has its size checked; otherwise (or when pieces are
    /// missing) the spool is copied — and removes the spool. Blocking.
    pub fn publish(&self, name: &str) -> Result<(), BlobError> {
        let Some(store) = &self.database else {
            return Ok(());
        };
        let path = self.path(name).ok_or(BlobError::Missing)?;
        let mut file = std::fs::File::open(&path)?;
        let size = file.metadata()?.len();
        if size == 0 || store.blob_size(name)? != size {
            store.blob_write(name, &mut file)?;
        }
        drop(file);
        let kept = (self.keep_uploads)
            .then(|| self.kept_path(name))
            .flatten()
            .is_some_and(|kept| std::fs::rename(&path, kept).is_ok());
        if !kept {
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }

    /// In database mode, a copy of upload `name` into the store made while it arrives (see
    /// [`UploadCopy`]); `None` locally. Needs a Tokio runtime.
    pub fn upload_copy(&self, name: &str) -> Option<UploadCopy> {
        let store = self.database.clone()?;
        Some(UploadCopy {
            store,
            name: name.to_string(),
            piece: Vec::with_capacity(UPLOAD_PIECE),
            seq: 0,
            pending: std::collections::VecDeque::with_capacity(UPLOAD_IN_FLIGHT),
            finished: false,
        })
    }

    /// Creates blobs `names` (new names) with what `fill` writes into each; their sizes. Locally
    /// they are files, synced before this returns. In database mode nothing touches the local
    /// disk: each blob's bytes go to the store in pieces while `fill` writes, on a thread of
    /// their own and in one transaction committed after `fill` succeeded, so the database's
    /// work runs beside the caller's (a split's partition) instead of after it. Memory: a piece
    /// per blob and four in flight. When either side fails nothing is stored; locally the
    /// caller removes what was written ([`BlobStore::remove`]). Blocking.
    pub fn create_many<T, E>(
        &self,
        names: &[String],
        fill: impl FnOnce(&mut [NewBlob]) -> Result<T, E>,
    ) -> Result<(T, Vec<u64>), ManyError<E>> {
        let blob_err = |e: io::Error| ManyError::Blob(BlobError::Io(e));
        let Some(store) = &self.database else {
            let mut blobs = Vec::with_capacity(names.len());
            for name in names {
                let path = self.path(name).ok_or(ManyError::Blob(BlobError::Missing))?;
                let file = std::fs::File::create(path).map_err(blob_err)?;
                blobs.push(NewBlob {
                    sink: Sink::File(io::BufWriter::with_capacity(256 * 1024, file)),
                    size: 0,
                });
            }
            let filled = fill(&mut blobs).map_err(ManyError::Fill)?;
            let sizes = blobs.iter().map(|b| b.size).collect();
            for blob in blobs {
                if let Sink::File(file) = blob.sink {
                    file.into_inner()
                        .map_err(|e| blob_err(e.into_error()))?
                        .sync_all()
                        .map_err(blob_err)?;
                }
            }
            return Ok((filled, sizes));
        };
        let (to, from) = std::sync::mpsc::sync_channel::<Piece>(4);
        std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let mut abandoned = false;
                let mut pieces = std::iter::from_fn(|| match from.recv() {
                    Ok(Piece::Data(i, data)) => Some(Ok((i, data))),
                    Ok(Piece::Done) => None,
                    Err(_) => {
                        abandoned = true;
                        Some(Err(StoreError::Other(
                            "the files were not written whole".into(),
                        )))
                    }
                });
                let stored = store.blob_write_many(names, &mut pieces);
                (stored, abandoned)
            });
            let mut blobs: Vec<NewBlob> = (0..names.len())
                .map(|index| NewBlob {
                    sink: Sink::Streamed {
                        index,
                        piece: Vec::new(),
                        to: to.clone(),
                    },
                    size: 0,
                })
                .collect();
            let filled = fill(&mut blobs);
            let sizes: Vec<u64> = blobs.iter().map(|b| b.size).collect();
            if filled.is_ok() {
                for blob in blobs {
                    if let Sink::Streamed { index, piece, to } = blob.sink
                        && !piece.is_empty()
                    {
                        // A writer that stopped says why when joined.
                        let _ = to.send(Piece::Data(index, piece));
                    }
                }
                let _ = to.send(Piece::Done);
            } else {
                drop(blobs);
            }
            drop(to);
            let (stored, abandoned) = writer.join().unwrap_or_else(|_| {
                let e = StoreError::Other("the blob writer panicked".into());
                (Err(e), false)
            });
            match (filled, stored) {
                (Ok(filled), Ok(())) => Ok((filled, sizes)),
                // The store's own failure is the cause (the writing then only lost its reader).
                (_, Err(e)) if !abandoned => Err(ManyError::Blob(BlobError::Store(e))),
                (Err(e), _) => Err(ManyError::Fill(e)),
                (Ok(_), Err(e)) => Err(ManyError::Blob(BlobError::Store(e))),
            }
        })
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
        let copy = self.dir.join(format!(
            "{}.{}.{}.copy",
            name,
            owner_tag(),
            Self::new_name().trim_end_matches(".upload")
        ));
        // The spool this process kept of its own upload, taken by one checkout (the rename),
        // if it is the stored file's size.
        if let Some(kept) = self.kept_path(name)
            && std::fs::rename(&kept, &copy).is_ok()
        {
            let local = LocalCopy {
                path: copy.clone(),
                temporary: true,
            };
            let size = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
            if size > 0 && store.blob_size(name)? == size {
                tracing::info!(blob = name, size, "running on the upload this process kept");
                return Ok(local);
            }
        }
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

    /// Removes the blob of an upload that got no job (the request failed after storing it): as
    /// [`BlobStore::remove`], retrying the stored copy's removal a few times, since the failure
    /// was often a busy database. Whatever still fails is left to the orphan sweep. Blocking.
    pub fn discard(&self, name: &str) {
        for path in [self.temp_path(name), self.path(name), self.kept_path(name)]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
        let Some(store) = &self.database else { return };
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=5 {
            match store.blob_delete(name) {
                Ok(()) => return,
                Err(e) if attempt == 5 => {
                    tracing::warn!(blob = name, error = %e, "could not remove a stored upload; the orphan sweep will");
                }
                Err(_) => std::thread::sleep(wait),
            }
            wait *= 2;
        }
    }

    /// Removes a blob (local file, spool and stored copy). Blocking.
    pub fn remove(&self, name: &str) {
        for p in [self.path(name), self.kept_path(name)]
            .into_iter()
            .flatten()
        {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(blob = name, error = %e, "could not remove blob");
            }
        }
        if let Some(store) = &self.database
            && let Err(e) = store.blob_delete(name)
        {
            tracing::warn!(blob = name, error = %e, "could not remove stored blob");
        }
    }
}

/// Removes a file; false when it was already gone or could not be removed (logged).
fn remove_quietly(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "could not remove an orphaned file");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names_and_only_dead_local_ones_are_gone() {
        let name = format!("{}.{}.part", BlobStore::new_name(), owner_tag());
        let owner = owner_of(&name).expect("owner");
        assert_eq!(owner, owner_tag());
        assert!(!owner_gone(owner), "this process is alive");
        assert_eq!(owner_of(&BlobStore::new_name()), None);
        // A pid that cannot exist, on this host: gone (where hosts can be told apart at all).
        let dead = format!("p4294967295h{}", host_tag());
        assert_eq!(owner_gone(&dead), !host_tag().is_empty());
        // The same pid on another host or namespace: not ours to judge.
        assert!(!owner_gone("p4294967295hdeadbeef") || host_tag() == "deadbeef");
    }
}
