//! `sluice org`, `sluice user` and `sluice token`: managing organisations, users and API tokens
//! directly in the database (the same `--data-dir` / `--database-url` as `sluice migrate`).
//!
//! Each command prints what scripts need on stdout (an id, or the new token) and a sentence
//! for people on stderr. Token changes are written to the audit log of the user's organisation.

use std::sync::Arc;

use chrono::Utc;
use clap::{Args, Subcommand};

use super::CliResult;
use super::serve::{StorageArgs, open_job_store};
use crate::api::auth;
use crate::store::{AuditEntry, JobStore, OrgLimits, Role};

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an organisation; prints its id.
    Create(OrgCreateArgs),
    /// Set (or, when a flag is left out, clear) an organisation's upload limits.
    Limits(OrgLimitsArgs),
    /// List organisations: id, name and limits, tab-separated under a header line.
    List(StorageOnly),
}

/// A command that needs only the database.
#[derive(Args)]
pub struct StorageOnly {
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Which organisation's users or tokens to list.
#[derive(Args)]
pub struct ListArgs {
    /// Only this organisation (its name or its id); default: all.
    #[arg(long)]
    pub org: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Args)]
pub struct OrgCreateArgs {
    /// A unique name.
    pub name: String,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Args)]
pub struct OrgLimitsArgs {
    /// The organisation: its name or its id.
    pub org: String,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// An organisation's own limits; they narrow the server's, never widen them.
#[derive(Args)]
pub struct LimitArgs {
    /// Largest upload, in megabytes (default: the server's `--max-upload-mb`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_mb: Option<u64>,
    /// Most data rows one upload may have (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> OrgLimits {
        OrgLimits {
            max_upload_bytes: self.max_upload_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
            max_rows: self.max_rows,
        }
    }
}

/// The id of an organisation named by id or by name.
fn org_id(s: &dyn JobStore, org: &str) -> Result<i64, String> {
    match org.parse::<i64>() {
        Ok(id) if s.org_exists(id).map_err(store_err)? => Some(id),
        _ => s.org_find(org).map_err(store_err)?,
    }
    .ok_or_else(|| format!("no organisation `{org}`: create it with `sluice org create`"))
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user in an organisation; prints its id.
    Create(UserCreateArgs),
    /// List users: id, organisation, name and role, tab-separated under a header line.
    List(ListArgs),
}

#[derive(Args)]
pub struct UserCreateArgs {
    /// The organisation: its name or its id.
    #[arg(long)]
    pub org: String,
    /// A name unique inside the organisation.
    #[arg(long)]
    pub name: String,
    /// `admin` (manages tokens and users, controls every job of the organisation) or `member`
    /// (imports, sees the organisation's jobs, controls the jobs they started).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user; prints the token, which is shown only this once.
    Create(TokenCreateArgs),
    /// Revoke a token by its id: it answers 401 from now on.
    Revoke(TokenRevokeArgs),
    /// List tokens, newest first: id, user, organisation, state (live, expired, revoked),
    /// created, expires, last used and label, tab-separated under a header line. Never the
    /// tokens themselves.
    List(ListArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    /// The user's id (printed by `sluice user create`).
    #[arg(long)]
    pub user: i64,
    /// How long the token lives (`90m`, `12h`, `30d`, …); default: until revoked.
    #[arg(long, value_parser = crate::duration::parse)]
    pub expires: Option<std::time::Duration>,
    /// A note saying what the token is for.
    #[arg(long, default_value = "created by sluice token create")]
    pub label: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Args)]
pub struct TokenRevokeArgs {
    /// The token's id (printed by `sluice token create`).
    pub id: i64,
    #[command(flatten)]
    pub storage: StorageArgs,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Runs `f` on the store, off the async runtime.
async fn with_store<T: Send + 'static>(
    storage: StorageArgs,
    f: impl FnOnce(&dyn JobStore) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let store: Arc<dyn JobStore> = open_job_store(&storage)?;
        f(store.as_ref())
    })
    .await
    .map_err(|e| format!("store task failed: {e}"))?
}

fn store_err(e: crate::store::StoreError) -> String {
    e.to_string()
}

pub async fn org(cmd: OrgCommand) -> CliResult {
    match cmd {
        OrgCommand::Create(args) => {
            let name = args.name.trim().to_string();
            if name.is_empty() {
                return Err("an organisation needs a name".into());
            }
            let (n, limits) = (name.clone(), args.limits.limits());
            let id = with_store(args.storage, move |s| {
                let id = s
                    .org_insert(&n)
                    .map_err(store_err)?
                    .ok_or_else(|| format!("an organisation named `{n}` already exists"))?;
                if limits != OrgLimits::default() {
                    s.org_set_limits(id, limits).map_err(store_err)?;
                }
                Ok(id)
            })
            .await?;
            println!("{id}");
            eprintln!("sluice: created organisation {id} ({name})");
        }
        OrgCommand::Limits(args) => {
            let (org, limits) = (args.org.trim().to_string(), args.limits.limits());
            let id = with_store(args.storage, move |s| {
                let id = org_id(s, &org)?;
                s.org_set_limits(id, limits).map_err(store_err)?;
                Ok(id)
            })
            .await?;
            println!("{id}");
            eprintln!("sluice: set the limits of organisation {id}: {limits:?}");
        }
        OrgCommand::List(args) => {
            let orgs = with_store(args.storage, |s| s.org_list().map_err(store_err)).await?;
            println!("id\tname\tmax_upload_mb\tmax_rows");
            for o in orgs {
                println!(
                    "{}\t{}\t{}\t{}",
                    o.id,
                    o.name,
                    o.limits
                        .max_upload_bytes
                        .map_or("-".into(), |b| (b / (1024 * 1024)).to_string()),
                    o.limits.max_rows.map_or("-".into(), |n| n.to_string()),
                );
            }
        }
    }
    Ok(())
}

/// The organisation named by `--org`, if any.
fn org_filter(s: &dyn JobStore, org: Option<&str>) -> Result<Option<i64>, String> {
    org.map(|o| org_id(s, o.trim())).transpose()
}

/// A time as the list commands print it; `-` for none.
fn when(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

pub async fn user(cmd: UserCommand) -> CliResult {
    let args = match cmd {
        UserCommand::Create(args) => args,
        UserCommand::List(args) => {
            let org = args.org;
            let users = with_store(args.storage, move |s| {
                let org = org_filter(s, org.as_deref())?;
                s.user_list(org).map_err(store_err)
            })
            .await?;
            println!("id\torg\tname\trole");
            for u in users {
                println!("{}\t{}\t{}\t{}", u.id, u.org_id, u.name, u.role.as_str());
            }
            return Ok(());
        }
    };
    let name = args.name.trim().to_string();
    if name.is_empty() {
        return Err("a user needs a name".into());
    }
    let (org, role, n) = (args.org.trim().to_string(), args.role, name.clone());
    let (id, org_id) = with_store(args.storage, move |s| {
        let org_id = org_id(s, &org)?;
        let audit = AuditEntry {
            org_id: Some(org_id),
            action: "user.create".into(),
            detail: Some(format!("{} from the command line", role.as_str())),
            ..Default::default()
        };
        let id = s
            .user_insert(org_id, &n, role, Some(&audit))
            .map_err(store_err)?
            .ok_or_else(|| format!("organisation {org_id} already has a user named `{n}`"))?;
        Ok((id, org_id))
    })
    .await?;
    println!("{id}");
    eprintln!(
        "sluice: created user {id} ({name}, {}) in organisation {org_id}",
        role.as_str()
    );
    Ok(())
}

pub async fn token(cmd: TokenCommand) -> CliResult {
    match cmd {
        TokenCommand::Create(args) => {
            let expires_at = args
                .expires
                .map(|d| {
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| Utc::now().checked_add_signed(d))
                        .ok_or("--expires is too far in the future")
                })
                .transpose()?;
            let token = auth::new_token();
            let hash = auth::hash_token(&token);
            let (user, label) = (args.user, args.label);
            let (id, org_id) = with_store(args.storage, move |s| {
                let u = s
                    .user_get(user)
                    .map_err(store_err)?
                    .ok_or_else(|| format!("no user with id {user}"))?;
                let audit = AuditEntry {
                    org_id: Some(u.org_id),
                    action: "token.create".into(),
                    detail: Some(format!(
                        "for user {} ({}) from the command line",
                        u.id, u.name
                    )),
                    ..Default::default()
                };
                let id = s
                    .token_insert(&label, &hash, u.id, expires_at, Some(&audit))
                    .map_err(store_err)?;
                Ok((id, u.org_id))
            })
            .await?;
            println!("{token}");
            let until = expires_at.map_or("until revoked".to_string(), |t| {
                format!("until {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
            });
            eprintln!(
                "sluice: created token {id} for user {user} in organisation {org_id}, valid {until}. \
                 It is shown only this once; keep it."
            );
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let id = args.id;
            with_store(args.storage, move |s| {
                let missing = || format!("no live token with id {id}");
                let audit = AuditEntry {
                    org_id: Some(s.token_org(id).map_err(store_err)?.ok_or_else(missing)?),
                    action: "token.revoke".into(),
                    detail: Some("from the command line".into()),
                    ..Default::default()
                };
                s.token_revoke(id, None, Some(&audit))
                    .map_err(store_err)?
                    .map(|_| ())
                    .ok_or_else(missing)
            })
            .await?;
            println!("{id}");
            eprintln!("sluice: revoked token {id}");
            Ok(())
        }
        TokenCommand::List(args) => {
            let org = args.org;
            let tokens = with_store(args.storage, move |s| {
                let org = org_filter(s, org.as_deref())?;
                s.token_list(org).map_err(store_err)
            })
            .await?;
            let now = Utc::now();
            println!("id\tuser\torg\tstate\tcreated\texpires\tlast_used\tlabel");
            for t in tokens {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "live"
                };
                let id_or_dash = |n: Option<i64>| n.map_or("-".into(), |n| n.to_string());
                println!(
                    "{}\t{}\t{}\t{state}\t{}\t{}\t{}\t{}",
                    t.id,
                    id_or_dash(t.user_id),
                    id_or_dash(t.org_id),
                    when(Some(t.created_at)),
                    when(t.expires_at),
                    when(t.last_used_at),
                    t.label.replace(['\t', '\n'], " "),
                );
            }
            Ok(())
        }
    }
}
