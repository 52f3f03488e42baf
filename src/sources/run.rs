//! Running a source: find the files (a directory listing, an HTTP GET), decide which are ready
//! and new, put each into the blob store and create its job exactly as an upload does
//! (`api::upload::save_stream` and `create_job`, with the mapping gate on), record every run,
//! and the scheduler task of `sluice serve` that fires due sources.
//!
//! The stability window is judged from what the previous run saw (size and mtime per file, in
//! `sources.state`), never by sleeping: a file is taken once two looks at least `stableSeconds`
//! apart found it the same. A file's content is never imported twice by one source: its
//! SHA-256 is looked up among the source's imported runs before a job is created.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{After, Pick, Schedule, ScheduleSpec, SourceConfig, SourceSecrets, glob_matches};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::upload::{Arrival, Received, create_job, save_stream};
use crate::store::{Role, RunEnd, RunOutcome, RunStart, Source, SourceRun, StoreError};

/// How often the scheduler looks for due sources.
const TICK: Duration = Duration::from_millis(250);
/// Sources fired per look, at most.
const DUE_BATCH: u64 = 20;

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// A look at a file: its size and mtime, and since when they have been so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Look {
    size: u64,
    mtime_ms: i64,
    since: DateTime<Utc>,
}

/// What a source remembers between runs (`sources.state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// Directory: the files seen by the last run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, Look>,
    /// Directory with `after: leave`: files already taken, by size and mtime (not hashed again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    handled: BTreeMap<String, (u64, i64)>,
    /// URL: the validators of the last file taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

fn end(outcome: RunOutcome, file: Option<&str>, reason: impl Into<String>) -> RunEnd {
    RunEnd {
        outcome,
        file: file.map(str::to_string),
        sha256: None,
        job_id: None,
        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
    }
}

async fn store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn crate::store::JobStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    state.jobs.store_call(f).await
}

/// Starts a run of `source` under `key` (see [`crate::store::JobStore::run_start`]).
pub async fn start(
    state: &AppState,
    source: &Source,
    key: String,
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
) -> Result<RunStart, StoreError> {
    let id = source.id;
    store(state, move |s| {
        s.run_start(id, &key, trigger.as_str(), scheduled_for)
    })
    .await
}

/// A new key for a run asked for by a person.
pub fn manual_key() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!(
        "manual:{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Runs a started run to its end and records it: the first file's outcome on `run`, one more
/// run (key `<key>#N`) for each further file.
pub async fn execute(state: Arc<AppState>, source: Source, run: SourceRun) {
    let ends = match source.kind.as_str() {
        "directory" => match local_dir(&state, &source) {
            Ok(dir) => files(&state, &source, &Place::Local(dir)).await,
            Err(reason) => Err(reason),
        },
        "sftp" => match super::sftp::Remote::connect(&source, state.sources.allow_private).await {
            Ok(remote) => files(&state, &source, &Place::Sftp(Box::new(remote))).await,
            Err(reason) => Err(reason),
        },
        "url" => url(&state, &source).await,
        other => Err(format!("unknown source kind `{other}`")),
    };
    let ends = ends.unwrap_or_else(|reason| vec![end(RunOutcome::Failed, None, reason)]);
    let mut imported = false;
    for (i, e) in ends.into_iter().enumerate() {
        imported |= e.outcome == RunOutcome::Imported;
        crate::telemetry::source_run(e.outcome.as_str());
        let run = run.clone();
        let recorded = store(&state, move |s| {
            if i == 0 {
                s.run_finish(run.id, &e)
            } else {
                s.run_add(&run, i + 1, &e)
            }
        })
        .await;
        if let Err(err) = recorded {
            tracing::warn!(source = source.id, error = %err, "cannot record a source run");
        }
    }
    if imported {
        state.jobs.wake.notify_one();
    }
}

/// A directory source's directory, checked again against the server's `--source-root`s of
/// now (they may have changed since the source was saved), with its `moveTo`.
fn local_dir(state: &AppState, source: &Source) -> Result<PathBuf, String> {
    let config: SourceConfig =
        serde_json::from_value(source.config.clone()).map_err(|e| e.to_string())?;
    let roots = &state.sources.roots;
    let dir = super::allowed_path(roots, Path::new(config.path.as_deref().unwrap_or_default()))
        .map_err(|e| e.message)?;
    if let Some(to) = &config.move_to {
        super::allowed_path(roots, Path::new(to)).map_err(|e| e.message)?;
    }
    Ok(dir)
}

/// The caller a source's jobs are created as: the admin token that saved the source.
async fn caller_of(state: &AppState, source: &Source) -> Result<Caller, String> {
    let (Some(token_id), Some(user_id)) = (source.created_by, source.user_id) else {
        return Err("the source has no creator to import as".into());
    };
    let org = source.org_id;
    let limits = store(state, move |s| s.org_list())
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|o| o.id == org)
        .map(|o| o.limits)
        .unwrap_or_default();
    Ok(Caller {
        token_id,
        user_id,
        org_id: org,
        role: Role::Admin,
        limits,
    })
}

fn mtime_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// The regular files of `dir` whose names match `glob`: name, size, mtime.
fn list(dir: &Path, glob: &str) -> std::io::Result<Vec<(String, u64, i64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name.ends_with(".done") || !glob_matches(glob, &name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            out.push((name, meta.len(), mtime_ms(&meta)));
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Where a source's files are: a directory of this server, or of an SFTP server.
enum Place {
    Local(PathBuf),
    Sftp(Box<super::sftp::Remote>),
}

impl Place {
    /// The regular files matching `glob` (not `.done` markers nor hidden files): name, size,
    /// mtime in ms; oldest first.
    async fn list(&self, glob: &str) -> Result<Vec<(String, u64, i64)>, String> {
        let mut out = match self {
            Place::Local(dir) => {
                let (dir, glob) = (dir.clone(), glob.to_string());
                tokio::task::spawn_blocking(move || list(&dir, &glob))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot read the directory: {e}"))?
            }
            Place::Sftp(remote) => remote.list().await?,
        };
        out.retain(|(name, _, _)| {
            !name.starts_with('.') && !name.ends_with(".done") && glob_matches(glob, name)
        });
        out.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    async fn has(&self, name: &str) -> bool {
        match self {
            Place::Local(dir) => dir.join(name).exists(),
            Place::Sftp(remote) => remote.has(name).await,
        }
    }

    /// A local file with the bytes of `name`, and whether it is a copy to remove after.
    async fn fetch(&self, state: &AppState, name: &str) -> Result<(PathBuf, bool), String> {
        match self {
            Place::Local(dir) => Ok((dir.join(name), false)),
            Place::Sftp(remote) => {
                let temp = state
                    .jobs
                    .blobs
                    .temp_path(&crate::blob::BlobStore::new_name())
                    .ok_or("no temp file name")?;
                if let Err(e) = remote.download(name, &temp, state.max_upload_bytes).await {
                    let _ = tokio::fs::remove_file(&temp).await;
                    return Err(e);
                }
                Ok((temp, true))
            }
        }
    }

    /// Deletes `name` (and its `.done` marker).
    async fn remove(&self, name: &str) -> Result<(), String> {
        let marker = format!("{name}.done");
        match self {
            Place::Local(dir) => {
                let _ = std::fs::remove_file(dir.join(&marker));
                std::fs::remove_file(dir.join(name)).map_err(|e| e.to_string())
            }
            Place::Sftp(remote) => {
                let _ = remote.remove(&marker).await;
                remote.remove(name).await
            }
        }
    }

    /// Moves `name` into directory `to` (`name.N` when the name is taken there); its `.done`
    /// marker goes.
    async fn move_into(&self, name: &str, to: &str) -> Result<(), String> {
        let marker = format!("{name}.done");
        match self {
            Place::Local(dir) => {
                let _ = std::fs::remove_file(dir.join(&marker));
                move_into(&dir.join(name), Path::new(to), name).map_err(|e| e.to_string())
            }
            Place::Sftp(remote) => {
                let _ = remote.remove(&marker).await;
                remote.move_into(name, to).await
            }
        }
    }
}

/// A directory or SFTP source's run: which files are ready and new, each taken as an upload,
/// then left, moved or deleted.
async fn files(
    state: &Arc<AppState>,
    source: &Source,
    place: &Place,
) -> Result<Vec<RunEnd>, String> {
    let config: SourceConfig =
        serde_json::from_value(source.config.clone()).map_err(|e| e.to_string())?;
    let glob = config.glob.clone().unwrap_or_else(|| "*".into());
    let listing = place.list(&glob).await?;
    let mut st: State = serde_json::from_value(source.state.clone()).unwrap_or_default();
    let now = Utc::now();
    let window = chrono::Duration::seconds(i64::from(config.stable_seconds.unwrap_or(0)));
    let marker = config.done_marker == Some(true);
    let mut seen = BTreeMap::new();
    let mut ready = Vec::new();
    for (name, size, mtime) in &listing {
        let same = st
            .seen
            .get(name)
            .filter(|l| l.size == *size && l.mtime_ms == *mtime);
        let since = same.map_or(now, |l| l.since);
        let stable = if marker {
            place.has(&format!("{name}.done")).await
        } else {
            window.is_zero() || (same.is_some() && now - since >= window)
        };
        seen.insert(
            name.clone(),
            Look {
                size: *size,
                mtime_ms: *mtime,
                since,
            },
        );
        ready.push((name.clone(), *size, *mtime, stable));
    }
    st.seen = seen;
    st.handled.retain(|n, _| st.seen.contains_key(n));
    let handled =
        |st: &State, n: &str, size: u64, mtime: i64| st.handled.get(n) == Some(&(size, mtime));
    let pick: Pick = serde_json::from_value(source.pick.clone().into()).unwrap_or_default();
    let mut ends = Vec::new();
    let chosen: Vec<(String, u64, i64)> = match pick {
        Pick::Latest => match ready.last() {
            None => Vec::new(),
            Some((n, s, m, _)) if handled(&st, n, *s, *m) => {
                ends.push(end(
                    RunOutcome::Unchanged,
                    Some(n),
                    "the newest file was taken before",
                ));
                Vec::new()
            }
            Some((n, _, _, false)) => {
                ends.push(end(RunOutcome::Skipped, Some(n), not_ready(marker)));
                Vec::new()
            }
            Some((n, s, m, true)) => vec![(n.clone(), *s, *m)],
        },
        Pick::AllNew => ready
            .iter()
            .filter(|(n, s, m, ok)| *ok && !handled(&st, n, *s, *m))
            .map(|(n, s, m, _)| (n.clone(), *s, *m))
            .collect(),
    };
    if ends.is_empty() && chosen.is_empty() {
        let waiting = ready.iter().filter(|r| !r.3).count();
        ends.push(end(
            RunOutcome::Skipped,
            None,
            if listing.is_empty() {
                format!("no file matches `{glob}`")
            } else if waiting > 0 {
                format!("{waiting} file(s) {}", not_ready(marker))
            } else {
                "no new file".into()
            },
        ));
    }
    let after = config.after.unwrap_or_default();
    for (name, size, mtime) in chosen {
        let e = match place.fetch(state, &name).await {
            Ok((path, copy)) => {
                let e = import_file(state, source, &path, &name).await;
                if copy {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                e
            }
            Err(reason) => end(RunOutcome::Failed, Some(&name), reason),
        };
        if matches!(e.outcome, RunOutcome::Imported | RunOutcome::Unchanged) {
            let done = match after {
                After::Leave => {
                    st.handled.insert(name.clone(), (size, mtime));
                    Ok(())
                }
                After::Delete => place.remove(&name).await,
                After::Move => {
                    place
                        .move_into(&name, config.move_to.as_deref().unwrap_or_default())
                        .await
                }
            };
            if after != After::Leave {
                st.seen.remove(&name);
            }
            if let Err(err) = done {
                tracing::warn!(source = source.id, error = %err, "cannot move or delete a source's file");
            }
        }
        ends.push(e);
    }
    let id = source.id;
    let state_json = serde_json::to_value(&st).map_err(|e| e.to_string())?;
    store(state, move |s| s.source_set_state(id, &state_json))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ends)
}

fn not_ready(marker: bool) -> &'static str {
    if marker {
        "waiting for its .done marker"
    } else {
        "not stable yet (size or mtime changed within the stability window)"
    }
}

/// Moves `path` into directory `to` under its name, or `name.N` when that is taken.
fn move_into(path: &Path, to: &Path, name: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut target = to.join(name);
    let mut n = 1;
    while target.exists() {
        target = to.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, target)
}

/// A file's bytes as a stream, unpacked on the way (`.gz`, or a `.zip` with one file), read on
/// a blocking thread a bounded number of chunks ahead. Returns the name of what is inside.
fn unpacked(
    path: &Path,
    name: &str,
) -> Result<
    (
        String,
        impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    ),
    String,
> {
    let lower = name.to_ascii_lowercase();
    let inner = if lower.ends_with(".gz") {
        name[..name.len() - 3].to_string()
    } else if lower.ends_with(".zip") {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
        let mut zip =
            zip::ZipArchive::new(file).map_err(|e| format!("{name} is not a zip file: {e}"))?;
        let files: Vec<String> = (0..zip.len())
            .filter_map(|i| {
                zip.by_index(i)
                    .ok()
                    .filter(|f| f.is_file())
                    .and_then(|f| f.name().ok().map(|n| n.to_string()))
            })
            .collect();
        match files.as_slice() {
            [one] => one.rsplit('/').next().unwrap_or(one).to_string(),
            _ => {
                return Err(format!(
                    "{name} holds {} files; a zipped source file must hold exactly one",
                    files.len()
                ));
            }
        }
    } else {
        name.to_string()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (path, lower) = (path.to_path_buf(), lower.clone());
    tokio::task::spawn_blocking(move || {
        let pump = |r: &mut dyn Read| pump(r, &tx);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if lower.ends_with(".gz") {
            pump(&mut flate2::read::GzDecoder::new(std::io::BufReader::new(
                file,
            )));
        } else if lower.ends_with(".zip") {
            let mut zip = match zip::ZipArchive::new(file) {
                Ok(z) => z,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                    return;
                }
            };
            let index = (0..zip.len()).find(|i| zip.by_index(*i).is_ok_and(|f| f.is_file()));
            match index.map(|i| zip.by_index(i)) {
                Some(Ok(mut entry)) => pump(&mut entry),
                Some(Err(e)) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                }
                None => {}
            }
        } else {
            pump(&mut std::io::BufReader::new(file));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((inner, Box::pin(stream)))
}

/// Sends what `r` reads, 256 KiB at a time, until its end, an error, or the receiver leaves.
fn pump(r: &mut dyn Read, tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx
                    .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Takes one file: into the blob store as an upload, then the upload's own job creation with
/// the mapping gate on — unless this source imported the same content before.
async fn import_file(state: &Arc<AppState>, source: &Source, path: &Path, name: &str) -> RunEnd {
    let caller = match caller_of(state, source).await {
        Ok(c) => c,
        Err(reason) => return end(RunOutcome::Failed, Some(name), reason),
    };
    let (inner, mut stream) = match unpacked(path, name) {
        Ok(s) => s,
        Err(reason) => return end(RunOutcome::Failed, Some(name), reason),
    };
    let max_bytes = caller
        .limits
        .max_upload_bytes
        .map_or(state.max_upload_bytes, |m| m.min(state.max_upload_bytes));
    let saved = match save_stream(state, max_bytes, &mut stream).await {
        Ok(s) => s,
        Err(e) => return end(RunOutcome::Failed, Some(name), e.to_string()),
    };
    let sha = saved.sha256().to_string();
    let (id, key) = (source.id, sha.clone());
    let with_sha = |mut e: RunEnd| {
        e.sha256 = Some(sha.clone());
        e
    };
    match store(state, move |s| s.run_imported(id, &key)).await {
        Ok(Some(job)) => {
            let mut e = end(
                RunOutcome::Unchanged,
                Some(name),
                "this content was imported by this source before",
            );
            e.job_id = Some(job).filter(|j| *j > 0);
            return with_sha(e);
        }
        Ok(None) => {}
        Err(err) => return with_sha(end(RunOutcome::Failed, Some(name), err.to_string())),
    }
    let Some(dataset) = state.jobs.datasets.get(&source.dataset) else {
        return with_sha(end(
            RunOutcome::Failed,
            Some(name),
            format!("dataset `{}` is no longer configured", source.dataset),
        ));
    };
    let options: super::ImportSpec =
        serde_json::from_value(source.options.clone()).unwrap_or_default();
    let arrival = Arrival {
        dataset,
        params: options.params(),
        filename: Some(inner),
        idempotency_key: None,
        analysis: false,
        mapping_gate: true,
    };
    let e = match create_job(state, &caller, saved, arrival).await {
        Ok(Received::Queued { job, .. }) => {
            let mut e = end(RunOutcome::Imported, Some(name), "");
            e.job_id = Some(job);
            e
        }
        Ok(Received::Answered(_)) => end(
            RunOutcome::Failed,
            Some(name),
            "the dataset imports synchronously",
        ),
        Err(ApiError::BadRequest {
            code: "needs_mapping" | "missing_columns" | "invalid_mapping" | "unknown_template",
            message,
        }) => end(RunOutcome::NeedsMapping, Some(name), message),
        Err(ApiError::Conflict {
            code: "duplicate_upload",
            job,
            ..
        }) => {
            let mut e = end(
                RunOutcome::Skipped,
                Some(name),
                "the same file is importing already",
            );
            e.job_id = job;
            e
        }
        Err(other) => end(RunOutcome::Failed, Some(name), other.to_string()),
    };
    with_sha(e)
}

async fn url(state: &Arc<AppState>, source: &Source) -> Result<Vec<RunEnd>, String> {
    use crate::webhooks::guard;
    let config: SourceConfig =
        serde_json::from_value(source.config.clone()).map_err(|e| e.to_string())?;
    let secrets: SourceSecrets =
        serde_json::from_value(source.secrets.clone()).map_err(|e| e.to_string())?;
    let mut st: State = serde_json::from_value(source.state.clone()).unwrap_or_default();
    let url = reqwest::Url::parse(config.url.as_deref().unwrap_or_default())
        .map_err(|e| format!("invalid url: {e}"))?;
    let allow_private = state.sources.allow_private;
    if !allow_private && !guard::literal_allowed(&url) {
        return Err(
            "the URL's address is private or loopback (the server allows it with --source-allow-private)"
                .into(),
        );
    }
    let mut builder = crate::tls::http_client()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        builder = builder
            .dns_resolver(guard::GuardedResolver)
            .redirect(guard::redirect_policy())
            .no_proxy();
    }
    let http = builder.build().map_err(|e| e.to_string())?;
    let mut req = http.get(url.clone());
    for (k, v) in secrets.headers.iter().flatten() {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(etag) = &st.etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, etag.as_str());
    }
    if let Some(lm) = &st.last_modified {
        req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm.as_str());
    }
    let resp = req.send().await.map_err(|e| {
        if guard::is_refusal(&e) {
            "the URL's host resolves only to private or loopback addresses".to_string()
        } else {
            format!("cannot fetch the URL: {}", crate::tls::cause(&e))
        }
    })?;
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "download".into());
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(vec![end(
            RunOutcome::Unchanged,
            Some(&name),
            "not modified (HTTP 304)",
        )]);
    }
    if !resp.status().is_success() {
        return Ok(vec![end(
            RunOutcome::Failed,
            Some(&name),
            format!("the server answered HTTP {}", resp.status().as_u16()),
        )]);
    }
    let header = |h: reqwest::header::HeaderName| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (
        header(reqwest::header::ETAG),
        header(reqwest::header::LAST_MODIFIED),
    );
    // The body goes to a local file first (bounded by the upload limit), then the same way as
    // a directory's file: unpacked, stored, checked, imported.
    let blobs = &state.jobs.blobs;
    let temp = blobs
        .temp_path(&crate::blob::BlobStore::new_name())
        .ok_or("no temp file name")?;
    let downloaded = download(resp, &temp, state.max_upload_bytes).await;
    let e = match downloaded {
        Ok(()) => import_file(state, source, &temp, &name).await,
        Err(reason) => end(RunOutcome::Failed, Some(&name), reason),
    };
    let _ = tokio::fs::remove_file(&temp).await;
    if matches!(e.outcome, RunOutcome::Imported | RunOutcome::Unchanged) {
        st.etag = etag;
        st.last_modified = last_modified;
        let id = source.id;
        let state_json = serde_json::to_value(&st).map_err(|e| e.to_string())?;
        store(state, move |s| s.source_set_state(id, &state_json))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(vec![e])
}

async fn download(resp: reqwest::Response, to: &Path, max: u64) -> Result<(), String> {
    let file = tokio::fs::File::create(to)
        .await
        .map_err(|e| format!("cannot store the download: {e}"))?;
    let mut out = tokio::io::BufWriter::new(file);
    let mut body = resp.bytes_stream();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("the download broke off: {}", e.without_url()))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(format!("the file is larger than the limit of {max} bytes"));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot store the download: {e}"))?;
    }
    out.flush()
        .await
        .map_err(|e| format!("cannot store the download: {e}"))
}

/// Starts the scheduler: every [`TICK`], fires the sources whose slot is due. A slot is claimed
/// with one guarded statement (see `store::sources`) and its run keyed by the slot, so with
/// several nodes on one database each slot fires once; the next slot is computed from now, so
/// after downtime a missed slot fires once.
pub fn spawn_scheduler(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let running: Arc<Mutex<HashSet<i64>>> = Arc::default();
        while !shutdown.is_cancelled() {
            if let Err(e) = fire_due(&state, &running).await {
                tracing::warn!(error = %e, "source scheduler: cannot read due sources");
            }
            // Wake at the next slot when it comes before the next tick, so that a slot fires
            // on time (and every node looks at it at once: the guards decide).
            let next = store(&state, |s| s.sources_next_due()).await.ok().flatten();
            let pause = next
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .map_or(TICK, |d| d.min(TICK));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    })
}

async fn fire_due(
    state: &Arc<AppState>,
    running: &Arc<Mutex<HashSet<i64>>>,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let due = store(state, move |s| s.sources_due(now, DUE_BATCH)).await?;
    for source in due {
        let Some(slot) = source.next_due_at else {
            continue;
        };
        if running.lock().is_ok_and(|r| r.contains(&source.id)) {
            continue;
        }
        let spec: ScheduleSpec =
            serde_json::from_value(source.schedule.clone()).unwrap_or_default();
        let next = match Schedule::parse(&spec) {
            Ok(s) => s.next_after(now),
            Err(_) => None,
        };
        let Some(next) = next else {
            tracing::warn!(
                source = source.id,
                "source has no next slot; not scheduled again"
            );
            continue;
        };
        let id = source.id;
        if !store(state, move |s| s.source_claim_slot(id, slot, next)).await? {
            continue;
        }
        let key = format!("slot:{}", crate::store::sql::time_text(slot));
        let run = match start(state, &source, key, Trigger::Schedule, Some(slot)).await? {
            RunStart::Started(run) => *run,
            RunStart::KeyTaken => continue,
            RunStart::Busy => {
                tracing::info!(
                    source = id,
                    "slot skipped: the previous run is still in progress"
                );
                continue;
            }
        };
        if let Ok(mut r) = running.lock() {
            r.insert(id);
        }
        let (state, running) = (state.clone(), running.clone());
        tokio::spawn(async move {
            execute(state, source, run).await;
            if let Ok(mut r) = running.lock() {
                r.remove(&id);
            }
        });
    }
    Ok(())
}
