//! SFTP sources: one SSH connection per run (russh + russh-sftp, pure Rust), the server's host
//! key pinned by its SHA-256 fingerprint (`hostKey: "SHA256:…"`, as `ssh-keygen -lf` prints it;
//! any other key is refused before authenticating), a password or a private key, and the
//! directory's files listed, downloaded, moved and deleted for `run.rs`.
//!
//! The host goes through the webhooks' SSRF guard: a name is resolved here and only allowed
//! addresses are dialled, unless `--source-allow-private`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;

use super::{SourceConfig, SourceSecrets};
use crate::store::Source;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts only the pinned host key; remembers the one offered, for the message.
struct Pinned {
    expected: String,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                cert.public_key().fingerprint(HashAlg::Sha256).to_string()
            }
        };
        let ok = fingerprint == self.expected;
        if let Ok(mut offered) = self.offered.lock() {
            *offered = Some(fingerprint);
        }
        Ok(ok)
    }
}

/// A connected SFTP session in the source's directory.
pub struct Remote {
    sftp: SftpSession,
    dir: String,
    _session: client::Handle<Pinned>,
}

/// Reads a private key in OpenSSH or PEM form, decrypting it with `passphrase` when it is
/// encrypted (checked when a source is saved, and at each connection). The error is the API's
/// message.
pub fn read_key(pem: &str, passphrase: Option<&str>) -> Result<PrivateKey, String> {
    use russh::keys::Error;
    match russh::keys::decode_secret_key(pem, passphrase) {
        Ok(key) => Ok(key),
        Err(Error::KeyIsEncrypted) => {
            Err("`privateKey` is encrypted: give its `privateKeyPassphrase`".into())
        }
        Err(_) if passphrase.is_some() => Err(
            "`privateKey` cannot be read with this `privateKeyPassphrase` (a wrong passphrase, or not an OpenSSH or PEM private key)"
                .into(),
        ),
        Err(_) => Err("`privateKey` is not a readable OpenSSH or PEM private key".into()),
    }
}

/// Whether `fingerprint` looks like `SHA256:` and 43 base64 characters.
pub fn fingerprint_well_formed(fingerprint: &str) -> bool {
    fingerprint.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

async fn addresses(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving `{host}` took too long"))?
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .collect();
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| allow_private || crate::webhooks::guard::is_allowed(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "`{host}` resolves only to private or loopback addresses (the server allows them with --source-allow-private)"
        ));
    }
    Ok(allowed)
}

impl Remote {
    /// Connects, checks the host key, authenticates and opens the SFTP subsystem.
    pub async fn connect(source: &Source, allow_private: bool) -> Result<Self, String> {
        let config: SourceConfig =
            serde_json::from_value(source.config.clone()).map_err(|e| e.to_string())?;
        let secrets: SourceSecrets =
            serde_json::from_value(source.secrets.clone()).map_err(|e| e.to_string())?;
        let host = config.host.clone().unwrap_or_default();
        let port = config.port.unwrap_or(22);
        let user = config.user.clone().unwrap_or_default();
        let expected = config.host_key.clone().unwrap_or_default();
        let addrs = addresses(&host, port, allow_private).await?;
        let offered = Arc::new(Mutex::new(None));
        let handler = Pinned {
            expected: expected.clone(),
            offered: offered.clone(),
        };
        let ssh = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, client::connect(ssh, addrs[0], handler)).await;
        let mut session = match connected {
            Err(_) => return Err(format!("connecting to {host}:{port} took too long")),
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                let offered = offered.lock().ok().and_then(|o| o.clone());
                return Err(match offered {
                    Some(key) if key != expected => format!(
                        "the server's host key is {key}, not the pinned {expected}: refused (if the server's key really changed, update the source's hostKey)"
                    ),
                    _ => format!("cannot connect to {host}:{port}: {e}"),
                });
            }
        };
        let authenticated = if let Some(pem) = &secrets.private_key {
            let key = read_key(pem, secrets.private_key_passphrase.as_deref())
                .map_err(|e| format!("the source's private key: {e}"))?;
            let hash = session
                .best_supported_rsa_hash()
                .await
                .map_err(|e| format!("authenticating: {e}"))?
                .flatten();
            session
                .authenticate_publickey(
                    user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
        } else {
            session
                .authenticate_password(user.clone(), secrets.password.clone().unwrap_or_default())
                .await
        }
        .map_err(|e| format!("authenticating: {e}"))?;
        if !authenticated.success() {
            return Err(format!("{host}:{port} refused the login of `{user}`"));
        }
        let channel = session
            .channel_open_session()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("starting SFTP: {e}"))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| format!("starting SFTP: {e}"))?;
        Ok(Remote {
            sftp,
            dir: config.path.unwrap_or_else(|| ".".into()),
            _session: session,
        })
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.trim_end_matches('/'))
    }

    /// The directory's regular files: name, size, mtime in ms.
    pub async fn list(&self) -> Result<Vec<(String, u64, i64)>, String> {
        let entries = self
            .sftp
            .read_dir(self.dir.clone())
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.dir))?;
        Ok(entries
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let meta = e.metadata();
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                (e.file_name(), meta.len(), mtime)
            })
            .collect())
    }

    pub async fn has(&self, name: &str) -> bool {
        self.sftp.metadata(self.path(name)).await.is_ok()
    }

    /// Copies `name` into the local file `to`, refusing past `max` bytes.
    pub async fn download(&self, name: &str, to: &Path, max: u64) -> Result<(), String> {
        let file = self
            .sftp
            .open(self.path(name))
            .await
            .map_err(|e| format!("cannot open {name}: {e}"))?;
        let out = tokio::fs::File::create(to)
            .await
            .map_err(|e| format!("cannot store the download: {e}"))?;
        let mut out = tokio::io::BufWriter::new(out);
        let mut limited = tokio::io::AsyncReadExt::take(file, max + 1);
        let copied = tokio::io::copy(&mut limited, &mut out)
            .await
            .map_err(|e| format!("the download of {name} broke off: {e}"))?;
        if copied > max {
            return Err(format!("the file is larger than the limit of {max} bytes"));
        }
        out.flush()
            .await
            .map_err(|e| format!("cannot store the download: {e}"))
    }

    pub async fn remove(&self, name: &str) -> Result<(), String> {
        self.sftp
            .remove_file(self.path(name))
            .await
            .map_err(|e| format!("cannot delete {name}: {e}"))
    }

    /// Moves `name` into directory `to` (relative to the source's path, or absolute), as
    /// `name.N` when the name is taken there.
    pub async fn move_into(&self, name: &str, to: &str) -> Result<(), String> {
        let dir = if to.starts_with('/') {
            to.trim_end_matches('/').to_string()
        } else {
            self.path(to.trim_end_matches('/'))
        };
        if self.sftp.metadata(dir.clone()).await.is_err() {
            self.sftp
                .create_dir(dir.clone())
                .await
                .map_err(|e| format!("cannot create {dir}: {e}"))?;
        }
        let mut target = format!("{dir}/{name}");
        let mut n = 1;
        while self.sftp.metadata(target.clone()).await.is_ok() {
            target = format!("{dir}/{name}.{n}");
            n += 1;
        }
        self.sftp
            .rename(self.path(name), target)
            .await
            .map_err(|e| format!("cannot move {name}: {e}"))
    }
}
