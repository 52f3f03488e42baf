//! Scheduled sources (issue 18): where files live (a directory on the server, a URL), when to
//! look (an interval or a cron expression in a time zone), which file to take and how to import
//! it.
//!
//! This module owns the source's settings as the API receives them ([`SourceSpec`]), their
//! checks ([`SourceSpec::check`]: every rule once, for create and update), schedules
//! ([`Schedule`]) and the file-name glob. `run.rs` runs a source (find files, fetch, hand each
//! to the upload's own `create_job`, record the run) and the scheduler task of `sluice serve`;
//! `email.rs` the e-mail notifications of runs and their jobs; `sftp.rs` the SFTP connection.

pub mod email;
pub mod run;
pub mod sftp;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dataset::Datasets;
use crate::store::{NewSource, Source};

/// What the operator allows sources to reach (flags of `sluice serve`).
#[derive(Debug, Clone, Default)]
pub struct SourcesConfig {
    /// `--source-root`: directory sources must lie under one of these (canonical paths).
    pub roots: Vec<PathBuf>,
    /// `--source-allow-private`: URL sources may reach loopback and private addresses.
    pub allow_private: bool,
}

/// A refused setting: the API's 400 code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        code,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Directory,
    Url,
    Sftp,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Directory => "directory",
            SourceKind::Url => "url",
            SourceKind::Sftp => "sftp",
        }
    }
}

/// Which of the matching files a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Pick {
    /// The newest matching file only.
    #[serde(rename = "latest")]
    Latest,
    /// Every matching file not imported before, oldest first.
    #[default]
    #[serde(rename = "all-new")]
    AllNew,
}

impl Pick {
    pub fn as_str(self) -> &'static str {
        match self {
            Pick::Latest => "latest",
            Pick::AllNew => "all-new",
        }
    }
}

/// What happens to a directory source's file once it is imported (or found imported before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum After {
    #[default]
    Leave,
    Move,
    Delete,
}

/// `{"every": "10m"}` or `{"cron": "0 2 * * *", "timezone": "Europe/Berlin"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// An interval: `90s`, `10m`, `6h`, `1d` (at least 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "10m")]
    pub every: Option<String>,
    /// A cron expression of 5 fields (minute hour day month weekday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0 2 * * *")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
}

/// The import options of a source's jobs, as the upload form takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// `upsert` (default), `insert`, `replace` or `sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// With `sync`: the most of the organisation's rows a run may delete (0–100, default 50).
    #[serde(
        default,
        rename = "maxDeletePercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delete_percent: Option<u8>,
    /// A saved mapping template of the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Column (header or `#N`) → field name, or null to ignore the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<BTreeMap<String, Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// `low`, `normal` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

impl ImportSpec {
    /// The options as the upload's form fields.
    pub fn params(&self) -> HashMap<String, String> {
        let mut p = HashMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                p.insert(k.to_string(), v.clone());
            }
        };
        put("mode", &self.mode);
        put("template", &self.template);
        put("sheet", &self.sheet);
        put("encoding", &self.encoding);
        put("delimiter", &self.delimiter);
        put("priority", &self.priority);
        put(
            "maxDeletePercent",
            &self.max_delete_percent.map(|p| p.to_string()),
        );
        if let Some(m) = &self.mapping
            && let Ok(text) = serde_json::to_string(m)
        {
            p.insert("mapping".into(), text);
        }
        p
    }
}

/// `POST /api/v1/sources`: a source as the API receives it. The kind's fields go with it at
/// the top level; `headers`, `password` and `privateKey` are secrets, never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-prices", "dataset": "products", "kind": "directory",
    "schedule": {"every": "10m"}, "pick": "all-new", "options": {"mode": "upsert"},
    "path": "/srv/drop/prices", "glob": "*.csv", "stableSeconds": 30, "after": "move", "moveTo": "done"}))]
pub struct SourceSpec {
    /// Unique in the organisation.
    pub name: String,
    pub dataset: String,
    pub kind: SourceKind,
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub pick: Pick,
    #[serde(default)]
    pub options: ImportSpec,
    /// Addresses e-mailed when a run needs a mapping and when a run's job ends (with
    /// `--smtp-url`): `"ops@example.com"` for every event, or `{"address": "…", "events":
    /// ["failed", "needs_mapping"]}` for some (`completed`, `failed`, `needs_mapping`).
    #[serde(default)]
    pub notify: Vec<crate::store::NotifyTarget>,
    /// A disabled source runs only when asked (`POST …/run`).
    #[serde(default = "yes")]
    pub enabled: bool,
    // directory
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// File names to take (`*` and `?`); default `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// A file is taken once its size and mtime stayed the same across two looks this many
    /// seconds apart (default 30; 0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 86400)]
    pub stable_seconds: Option<u32>,
    /// A file is taken once `<name>.done` exists beside it (instead of the stability window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_marker: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<After>,
    /// Where `after: move` puts files: relative to `path`, or absolute under a source root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_to: Option<String>,
    // url
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Request headers (secret: only their names are shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    // sftp (and `path`, `glob`, `stableSeconds`, `doneMarker`, `after`, `moveTo` as a directory)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default 22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An OpenSSH or PEM private key (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The passphrase of an encrypted `privateKey` (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_passphrase: Option<String>,
    /// The server's host key, pinned: its SHA-256 fingerprint as `ssh-keygen -lf` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s")]
    pub host_key: Option<String>,
}

fn yes() -> bool {
    true
}

/// The kind's settings as stored (`sources.config`) and shown: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceConfig {
    /// The canonical directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_marker: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<After>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The names of the request headers (their values are secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// `password` or `privateKey` (the secret itself is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// The secrets of a source (`sources.secrets`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSecrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_passphrase: Option<String>,
}

/// A source's schedule, parsed.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron {
        cron: Box<croner::Cron>,
        zone: chrono_tz::Tz,
    },
}

impl Schedule {
    pub fn parse(spec: &ScheduleSpec) -> Result<Self, SpecError> {
        let invalid = |m: String| bad("invalid_schedule", m);
        match (&spec.every, &spec.cron) {
            (Some(every), None) => {
                if spec.timezone.is_some() {
                    return Err(invalid("`timezone` goes with `cron`, not `every`".into()));
                }
                let d = crate::duration::parse(every).map_err(invalid)?;
                if d < Duration::from_secs(1) {
                    return Err(invalid("`every` must be at least 1s".into()));
                }
                Ok(Schedule::Every(d))
            }
            (None, Some(expr)) => {
                use std::str::FromStr;
                if expr.split_whitespace().count() != 5 {
                    return Err(invalid(format!(
                        "`{expr}` is not a cron expression of 5 fields (minute hour day month weekday)"
                    )));
                }
                let cron = croner::Cron::from_str(expr)
                    .map_err(|e| invalid(format!("`{expr}` is not a cron expression: {e}")))?;
                let zone = match &spec.timezone {
                    None => chrono_tz::UTC,
                    Some(z) => z
                        .parse::<chrono_tz::Tz>()
                        .map_err(|_| invalid(format!("`{z}` is not an IANA time zone")))?,
                };
                Ok(Schedule::Cron {
                    cron: Box::new(cron),
                    zone,
                })
            }
            _ => Err(invalid(
                "give either {\"every\": \"10m\"} or {\"cron\": \"0 2 * * *\", \"timezone\": \"Europe/Berlin\"}"
                    .into(),
            )),
        }
    }

    /// The first slot after `now` (to the millisecond, as stored). Computed from now, never by
    /// replaying missed slots: after downtime a source fires once, then keeps its rhythm.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = match self {
            Schedule::Every(d) => now + chrono::Duration::from_std(*d).ok()?,
            Schedule::Cron { cron, zone } => cron
                .find_next_occurrence(&now.with_timezone(zone), false)
                .ok()?
                .with_timezone(&Utc),
        };
        next.duration_trunc(chrono::Duration::milliseconds(1)).ok()
    }
}

/// Whether `name` matches `glob` (`*`: any run of characters, `?`: one character).
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

/// The canonical form of `path` if it lies under one of the roots.
pub fn allowed_path(roots: &[PathBuf], path: &Path) -> Result<PathBuf, SpecError> {
    let refuse = || {
        bad(
            "source_path_not_allowed",
            if roots.is_empty() {
                "this server allows no directory sources (start it with --source-root DIR)"
                    .to_string()
            } else {
                format!(
                    "`{}` is not an existing directory under a source root of this server",
                    path.display()
                )
            },
        )
    };
    let canonical = std::fs::canonicalize(path).map_err(|_| refuse())?;
    if !canonical.is_dir() || !roots.iter().any(|r| canonical.starts_with(r)) {
        return Err(refuse());
    }
    Ok(canonical)
}

/// A checked source, ready for the store (without its organisation, creator and times).
pub struct Checked {
    pub schedule: Schedule,
    pub config: SourceConfig,
    pub secrets: SourceSecrets,
}

impl SourceSpec {
    /// The source as the API shows it again, secrets included (for `PATCH`, which merges the
    /// changes into this and checks the whole again).
    pub fn of(source: &Source) -> Result<Self, serde_json::Error> {
        let mut doc = serde_json::Map::new();
        doc.insert("name".into(), source.name.clone().into());
        doc.insert("dataset".into(), source.dataset.clone().into());
        doc.insert("kind".into(), source.kind.clone().into());
        doc.insert("schedule".into(), source.schedule.clone());
        doc.insert("pick".into(), source.pick.clone().into());
        doc.insert("options".into(), source.options.clone());
        doc.insert("notify".into(), serde_json::to_value(&source.notify)?);
        doc.insert("enabled".into(), source.enabled.into());
        let config: SourceConfig = serde_json::from_value(source.config.clone())?;
        let secrets: SourceSecrets = serde_json::from_value(source.secrets.clone())?;
        let mut spec: SourceSpec = serde_json::from_value(serde_json::Value::Object(doc))?;
        spec.path = config.path;
        spec.glob = config.glob;
        spec.stable_seconds = config.stable_seconds;
        spec.done_marker = config.done_marker;
        spec.after = config.after;
        spec.move_to = config.move_to;
        spec.url = config.url;
        spec.headers = secrets.headers;
        spec.host = config.host;
        spec.port = config.port;
        spec.user = config.user;
        spec.host_key = config.host_key;
        spec.password = secrets.password;
        spec.private_key = secrets.private_key;
        spec.private_key_passphrase = secrets.private_key_passphrase;
        Ok(spec)
    }

    /// Every rule of a source's settings, for create and update.
    pub fn check(&self, datasets: &Datasets, cfg: &SourcesConfig) -> Result<Checked, SpecError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(bad(
                "invalid_name",
                "a source's name is 1–100 printable characters",
            ));
        }
        let Some(dataset) = datasets.get(&self.dataset) else {
            return Err(bad(
                "unknown_dataset",
                format!(
                    "no dataset named `{}`; configured: {}",
                    self.dataset,
                    datasets.names().join(", ")
                ),
            ));
        };
        if dataset.sync {
            return Err(bad(
                "sync_dataset",
                format!(
                    "dataset `{}` imports synchronously; sources import in the background",
                    self.dataset
                ),
            ));
        }
        let schedule = Schedule::parse(&self.schedule)?;
        let params = self.options.params();
        let mode = match &self.options.mode {
            Some(mode) => mode
                .parse::<crate::import::Mode>()
                .map_err(|m| bad("invalid_mode", m))?,
            None => crate::import::Mode::Upsert,
        };
        if let Some(p) = self.options.max_delete_percent
            && (p > 100 || mode != crate::import::Mode::Sync)
        {
            return Err(bad(
                "invalid_max_delete_percent",
                "maxDeletePercent is a whole number from 0 to 100, for mode sync only".to_string(),
            ));
        }
        if let Some(p) = &self.options.priority {
            p.trim()
                .parse::<crate::store::Priority>()
                .map_err(|m| bad("invalid_priority", m))?;
        }
        crate::api::options_check(&params).map_err(|(code, message)| bad(code, message))?;
        for target in &self.notify {
            if let crate::store::NotifyTarget::Filtered { address, events } = target {
                crate::store::check_events(events)
                    .map_err(|m| bad("invalid_notify", format!("`{address}`: {m}")))?;
            }
            let address = target.address();
            if !email::address_ok(address) {
                return Err(bad(
                    "invalid_notify",
                    format!("`{address}` is not an e-mail address"),
                ));
            }
        }
        let sftp_fields = self.host.is_some()
            || self.port.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.private_key.is_some()
            || self.private_key_passphrase.is_some()
            || self.host_key.is_some();
        let dir_fields = self.path.is_some()
            || self.glob.is_some()
            || self.stable_seconds.is_some()
            || self.done_marker.is_some()
            || self.after.is_some()
            || self.move_to.is_some();
        let url_fields = self.url.is_some() || self.headers.is_some();
        let misplaced = |what: &str| {
            bad(
                "invalid_source",
                format!(
                    "{what} fields do not belong to a {} source",
                    self.kind.as_str()
                ),
            )
        };
        let mut config = SourceConfig::default();
        let mut secrets = SourceSecrets::default();
        match self.kind {
            SourceKind::Sftp => {
                if url_fields {
                    return Err(misplaced("url"));
                }
                let needs = |v: &Option<String>, what: &str| {
                    v.as_deref()
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            bad("invalid_source", format!("an sftp source needs `{what}`"))
                        })
                };
                let host = needs(&self.host, "host")?;
                let user = needs(&self.user, "user")?;
                let host_key = needs(&self.host_key, "hostKey")?;
                if !sftp::fingerprint_well_formed(&host_key) {
                    return Err(bad(
                        "invalid_host_key",
                        "`hostKey` is the server key's SHA-256 fingerprint, `SHA256:` and 43 characters, as `ssh-keygen -lf KEY.pub` prints it",
                    ));
                }
                let passphrase = self.private_key_passphrase.as_deref();
                match (&self.password, &self.private_key) {
                    (Some(_), None) if passphrase.is_some() => {
                        return Err(bad(
                            "invalid_source",
                            "`privateKeyPassphrase` goes with `privateKey`",
                        ));
                    }
                    (Some(_), None) => config.auth = Some("password".into()),
                    (None, Some(key)) => {
                        sftp::read_key(key, passphrase)
                            .map_err(|message| bad("invalid_private_key", message))?;
                        config.auth = Some("privateKey".into())
                    }
                    _ => {
                        return Err(bad(
                            "invalid_source",
                            "an sftp source needs `password` or `privateKey` (one of them)",
                        ));
                    }
                }
                let path = needs(&self.path, "path")?;
                if !path.starts_with('/') {
                    return Err(bad(
                        "invalid_source",
                        "an sftp source's `path` is absolute on the server",
                    ));
                }
                self.files_config(&mut config)?;
                config.move_to = match (config.after, &self.move_to) {
                    (Some(After::Move), Some(to))
                        if !to.split('/').any(|c| c == "..") && !to.trim().is_empty() =>
                    {
                        Some(to.clone())
                    }
                    (Some(After::Move), Some(_)) => {
                        return Err(bad("invalid_source", "`moveTo` may not climb with `..`"));
                    }
                    (Some(After::Move), None) => {
                        return Err(bad("invalid_source", "`after: move` needs `moveTo`"));
                    }
                    (_, Some(_)) => {
                        return Err(bad("invalid_source", "`moveTo` goes with `after: move`"));
                    }
                    (_, None) => None,
                };
                config.path = Some(path);
                config.host = Some(host);
                config.port = Some(self.port.unwrap_or(22));
                config.user = Some(user);
                config.host_key = Some(host_key);
                secrets.password = self.password.clone();
                secrets.private_key = self.private_key.clone();
                secrets.private_key_passphrase = self.private_key_passphrase.clone();
            }
            SourceKind::Directory => {
                if url_fields {
                    return Err(misplaced("url"));
                }
                if sftp_fields {
                    return Err(misplaced("sftp"));
                }
                let path = self
                    .path
                    .as_deref()
                    .ok_or_else(|| bad("invalid_source", "a directory source needs `path`"))?;
                let dir = allowed_path(&cfg.roots, Path::new(path))?;
                self.files_config(&mut config)?;
                let after = self.after.unwrap_or_default();
                let move_to = match (after, &self.move_to) {
                    (After::Move, Some(to)) => {
                        // Checked by its words before anything is created, then again once it
                        // exists (a symbolic link on the way).
                        let target = dir.join(to);
                        let lexical = !Path::new(to)
                            .components()
                            .any(|c| matches!(c, std::path::Component::ParentDir))
                            && cfg.roots.iter().any(|r| target.starts_with(r));
                        if !lexical {
                            return Err(bad(
                                "source_path_not_allowed",
                                format!(
                                    "`moveTo` `{to}` is not under a source root of this server"
                                ),
                            ));
                        }
                        std::fs::create_dir_all(&target).map_err(|e| {
                            bad("invalid_source", format!("cannot create `moveTo`: {e}"))
                        })?;
                        let target = allowed_path(&cfg.roots, &target)?;
                        if target == dir {
                            return Err(bad(
                                "invalid_source",
                                "`moveTo` must be another directory than `path`",
                            ));
                        }
                        Some(target.to_string_lossy().into_owned())
                    }
                    (After::Move, None) => {
                        return Err(bad("invalid_source", "`after: move` needs `moveTo`"));
                    }
                    (_, Some(_)) => {
                        return Err(bad("invalid_source", "`moveTo` goes with `after: move`"));
                    }
                    (_, None) => None,
                };
                config.path = Some(dir.to_string_lossy().into_owned());
                config.after = Some(after);
                config.move_to = move_to;
            }
            SourceKind::Url => {
                if dir_fields {
                    return Err(misplaced("directory"));
                }
                if sftp_fields {
                    return Err(misplaced("sftp"));
                }
                let url = self
                    .url
                    .as_deref()
                    .ok_or_else(|| bad("invalid_source", "a url source needs `url`"))?;
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| bad("invalid_url", format!("`{url}`: {e}")))?;
                match parsed.scheme() {
                    "http" | "https" => {}
                    other => {
                        return Err(bad(
                            "invalid_url",
                            format!("`{other}:` URLs cannot be fetched; use http:// or https://"),
                        ));
                    }
                }
                if parsed.host_str().is_none() {
                    return Err(bad("invalid_url", format!("`{url}` has no host")));
                }
                if let Some(headers) = &self.headers {
                    for (k, v) in headers {
                        let name_ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
                        let value_ok = reqwest::header::HeaderValue::from_str(v).is_ok();
                        if !name_ok || !value_ok {
                            return Err(bad(
                                "invalid_header",
                                format!("header `{k}` is not a valid HTTP header"),
                            ));
                        }
                    }
                    config.header_names = Some(headers.keys().cloned().collect());
                    secrets.headers = Some(headers.clone());
                }
                config.url = Some(parsed.to_string());
            }
        }
        Ok(Checked {
            schedule,
            config,
            secrets,
        })
    }

    /// The settings directory and SFTP sources share: glob, readiness, what happens after.
    fn files_config(&self, config: &mut SourceConfig) -> Result<(), SpecError> {
        let glob = self.glob.clone().unwrap_or_else(|| "*".into());
        if glob.is_empty() || glob.contains('/') || glob.contains('\\') {
            return Err(bad(
                "invalid_source",
                "`glob` matches file names in the directory: no `/`",
            ));
        }
        config.glob = Some(glob);
        config.done_marker = self.done_marker.filter(|d| *d);
        config.stable_seconds = match config.done_marker {
            Some(true) => self.stable_seconds,
            _ => Some(self.stable_seconds.unwrap_or(30)),
        };
        if config.stable_seconds.is_some_and(|s| s > 86_400) {
            return Err(bad("invalid_source", "`stableSeconds` is at most 86400"));
        }
        config.after = Some(self.after.unwrap_or_default());
        Ok(())
    }

    /// The row to store for this (checked) source.
    pub fn to_new(
        &self,
        checked: &Checked,
        org_id: i64,
        created_by: Option<i64>,
        user_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> NewSource {
        NewSource {
            org_id,
            name: self.name.trim().to_string(),
            dataset: self.dataset.clone(),
            kind: self.kind.as_str().into(),
            schedule: serde_json::to_value(&self.schedule).unwrap_or_default(),
            pick: self.pick.as_str().into(),
            options: serde_json::to_value(&self.options).unwrap_or_default(),
            notify: self.notify.clone(),
            config: serde_json::to_value(&checked.config).unwrap_or_default(),
            secrets: serde_json::to_value(&checked.secrets).unwrap_or_default(),
            enabled: self.enabled,
            created_by,
            user_id,
            next_due_at: self
                .enabled
                .then(|| checked.schedule.next_after(now))
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob_matches("*.csv", "prices.csv"));
        assert!(glob_matches("*", "a"));
        assert!(glob_matches("p?ices-*.csv", "prices-2026.csv"));
        assert!(!glob_matches("*.csv", "prices.csv.part"));
        assert!(!glob_matches("*.csv", "prices.xlsx"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn schedules_fire_from_now_not_by_replaying_slots() {
        let now = DateTime::parse_from_rfc3339("2026-12-06T09:00:00.123456Z")
            .unwrap()
            .to_utc();
        let every = Schedule::parse(&ScheduleSpec {
            every: Some("10m".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            every.next_after(now).unwrap().to_rfc3339(),
            "2026-12-06T09:10:00.123+00:00"
        );
        let cron = Schedule::parse(&ScheduleSpec {
            cron: Some("0 2 * * *".into()),
            timezone: Some("Europe/Berlin".into()),
            ..Default::default()
        })
        .unwrap();
        // 02:00 in Berlin (UTC+1 in December) is 01:00 UTC, the next day.
        assert_eq!(
            cron.next_after(now).unwrap().to_rfc3339(),
            "2026-12-07T01:00:00+00:00"
        );
        for bad in [
            ScheduleSpec::default(),
            ScheduleSpec {
                every: Some("0s".into()),
                ..Default::default()
            },
            ScheduleSpec {
                cron: Some("61 * * * *".into()),
                ..Default::default()
            },
            ScheduleSpec {
                cron: Some("0 2 * * *".into()),
                timezone: Some("Mars/Base".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(Schedule::parse(&bad).unwrap_err().code, "invalid_schedule");
        }
    }
}
