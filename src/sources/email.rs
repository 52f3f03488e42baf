//! E-mail notifications (`--smtp-url`, `--smtp-from`): one message per finished run and address
//! of the source's `notify` — when a run is parked as `needs_mapping`, and when the job a run
//! started completes or fails — and one per import that ended and user subscription that asks
//! for it (`/api/v1/me/subscriptions`), naming the job, its counts, and links to the job page and
//! its rejected rows.
//!
//! Like webhook deliveries, e-mails are planned into the database (`email_deliveries`, once per
//! run across nodes: `store::sources::notify_plan`) and sent by a task of `sluice serve` that
//! claims due ones, so a mail server that is down never fails or slows an import: each failed
//! attempt is recorded and tried again with backoff, `--smtp-attempts` times in all.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::jobs::JobContext;
use crate::store::{
    DeliveryState, DueEmail, NewEmail, NotifiedJob, NotifyItem, RunOutcome, StoreError,
    SubscribedJob,
};

/// How often the notifier looks for e-mails to plan and send.
const POLL: Duration = Duration::from_millis(500);
/// How long a claimed e-mail is held from other nodes while it is sent.
const HOLD: Duration = Duration::from_secs(60);
/// Runs older than this are not mailed about (a server given `--smtp-url` later does not mail
/// its whole history).
const PLAN_WINDOW: chrono::Duration = chrono::Duration::days(1);

/// How the connection to the mail server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP (a relay on the same machine or network).
    None,
    /// Plain connection upgraded with STARTTLS before anything is sent; refused if the server
    /// does not offer it (`--smtp-starttls`).
    StartTls,
    /// TLS from the first byte (`smtps://`, port 465 by default).
    Tls,
}

/// Where and as whom e-mails are sent.
#[derive(Clone, Debug)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// User and password.
    pub credentials: Option<(String, String)>,
    pub from: Mailbox,
}

/// The SMTP settings.
#[derive(Clone)]
pub struct EmailConfig {
    pub smtp: SmtpTarget,
    pub attempts: u32,
    pub backoff: Duration,
    /// The server's address as recipients reach it, for links (`http://sluice.example:8080`).
    pub public_url: String,
}

impl SmtpTarget {
    /// Reads `--smtp-url smtp[s]://[USER:PASSWORD@]HOST[:PORT]` (user and password may come from
    /// their own flags instead), `--smtp-starttls` and `--smtp-from`.
    pub fn parse(
        url: &str,
        starttls: bool,
        user: Option<&str>,
        password: Option<&str>,
        from: &str,
    ) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("--smtp-url `{url}`: {e}"))?;
        let (security, default_port) = match (parsed.scheme(), starttls) {
            ("smtp", false) => (SmtpSecurity::None, 25),
            ("smtp", true) => (SmtpSecurity::StartTls, 587),
            ("smtps", false) => (SmtpSecurity::Tls, 465),
            ("smtps", true) => {
                return Err(
                    "--smtp-starttls goes with smtp:// (smtps:// is TLS from the start)".into(),
                );
            }
            (other, _) => {
                return Err(format!(
                    "--smtp-url: `{other}://` is not smtp:// or smtps://"
                ));
            }
        };
        if parsed.query().is_some() {
            return Err("--smtp-url takes no options (TLS: smtps:// or --smtp-starttls)".into());
        }
        let host = parsed
            .host_str()
            .ok_or("--smtp-url has no host")?
            .to_string();
        let port = parsed.port().unwrap_or(default_port);
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| "--smtp-url: bad percent-encoding".to_string())
        };
        let url_user = (!parsed.username().is_empty())
            .then(|| decode(parsed.username()))
            .transpose()?;
        let url_password = parsed.password().map(decode).transpose()?;
        let credentials = match (
            user.map(str::to_string).or(url_user),
            password.map(str::to_string).or(url_password),
        ) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err("--smtp-url: give both a user and a password, or neither".into()),
        };
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("--smtp-from `{from}`: {e}"))?;
        Ok(SmtpTarget {
            host,
            port,
            security,
            credentials,
            from,
        })
    }

    /// The mail transport (no connection is opened yet). Fails when the TLS set-up does.
    pub fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(Duration::from_secs(10)));
        builder = match self.security {
            SmtpSecurity::None => builder,
            SmtpSecurity::StartTls => {
                builder.tls(Tls::Required(crate::tls::smtp_parameters(&self.host)?))
            }
            SmtpSecurity::Tls => {
                builder.tls(Tls::Wrapper(crate::tls::smtp_parameters(&self.host)?))
            }
        };
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(builder.build())
    }
}

/// Whether `address` looks like an e-mail address (`local@domain.tld`, no spaces, at most 254
/// characters): the check of sources' `notify` and of subscriptions.
pub fn address_ok(address: &str) -> bool {
    address.len() <= 254
        && address.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !address.contains(char::is_whitespace)
        })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A job's end, as a message: its event, subject and body. `intro` says whose import it was.
fn job_message(job: &NotifiedJob, base: &str, subject_of: &str, intro: &str) -> Composed {
    let event = if job.status == "completed" {
        "completed"
    } else {
        "failed"
    };
    let counts = format!(
        "{} created, {} updated, {} unchanged, {} rejected",
        job.created, job.updated, job.unchanged, job.errors
    );
    let subject = format!(
        "[sluice] {subject_of}: job {} {} ({counts})",
        job.id, job.status
    );
    let mut body = format!("{intro}\n\nRows: {counts}.\n");
    if let Some(error) = &job.error {
        body.push_str(&format!("Error: {error}\n"));
    }
    body.push_str(&format!(
        "\nThe job: {base}/#/jobs/{id}\nIts status: {base}/api/v1/import/status/{id}\n",
        id = job.id
    ));
    if job.errors > 0 {
        body.push_str(&format!(
            "The rejected rows (CSV, ready to fix and upload again): \
             {base}/api/v1/import/{id}/errors?format=csv\n",
            id = job.id
        ));
    }
    (event, subject, body)
}

/// An e-mail's event, subject and body.
type Composed = (&'static str, String, String);

/// The messages of one finished run: one per address of the source's `notify`, and for a run
/// parked as `needs_mapping` one per subscription of the organisation to that.
pub fn compose(item: &NotifyItem, public_url: &str) -> Vec<NewEmail> {
    let base = public_url.trim_end_matches('/');
    let file = item.file.as_deref().unwrap_or("the file");
    let (event, subject, body) = match (item.outcome, &item.job) {
        (RunOutcome::NeedsMapping, _) => (
            "needs_mapping",
            format!("[sluice] {}: {file} needs a mapping", item.source_name),
            format!(
                "The source \"{name}\" found {file}, but its header does not map to the dataset \
                 \"{dataset}\" with full confidence, so nothing was imported.\n\n{reason}\n\n\
                 Give the source a mapping or a template (PATCH {base}/api/v1/sources/{id}) and \
                 its next run imports the file.\n\nThe source's runs: {base}/api/v1/sources/{id}/runs\n",
                name = item.source_name,
                dataset = item.dataset,
                reason = item.reason.as_deref().unwrap_or(""),
                id = item.source_id,
            ),
        ),
        (_, Some(job)) => job_message(
            job,
            base,
            &item.source_name,
            &format!(
                "The source \"{name}\" imported {file} into \"{dataset}\" as job {id}, which \
                 {status}.",
                name = item.source_name,
                dataset = item.dataset,
                id = job.id,
                status = job.status,
            ),
        ),
        // The job is gone (retention): nothing to say.
        _ => return Vec::new(),
    };
    let to_source = item
        .notify
        .iter()
        .filter(|t| t.wants(event))
        .map(|t| (None, t.address()));
    let to_subscribers = item
        .subscribers
        .iter()
        .map(|(id, a)| (Some(*id), a.as_str()));
    to_source
        .chain(to_subscribers)
        .map(|(subscription_id, address)| NewEmail {
            event: event.into(),
            address: address.to_string(),
            subject: subject.clone(),
            body: body.clone(),
            job_id: item.job.as_ref().map(|j| j.id),
            subscription_id,
        })
        .collect()
}

/// The message to a subscription about an import that ended.
pub fn compose_subscribed(item: &SubscribedJob, public_url: &str) -> NewEmail {
    let job = &item.job;
    let (event, subject, body) = job_message(
        job,
        public_url.trim_end_matches('/'),
        &item.dataset,
        &format!(
            "The import of {file} into \"{dataset}\" (job {id}) {status}.",
            file = job.filename,
            dataset = item.dataset,
            id = job.id,
            status = job.status,
        ),
    );
    NewEmail {
        event: event.into(),
        address: item.address.clone(),
        subject,
        body,
        job_id: Some(job.id),
        subscription_id: Some(item.subscription_id),
    }
}

/// Starts the notifier; it ends when `shutdown` is cancelled.
pub fn spawn_notifier(
    ctx: Arc<JobContext>,
    config: EmailConfig,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            if let Err(e) = plan(&ctx, &config).await {
                tracing::warn!(error = %e, "e-mail notifications: cannot plan");
            }
            if let Err(e) = send_due(&ctx, &mailer, &config).await {
                tracing::warn!(error = %e, "e-mail notifications: cannot send");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    })
}

async fn plan(ctx: &Arc<JobContext>, config: &EmailConfig) -> Result<(), StoreError> {
    let since = Utc::now() - PLAN_WINDOW;
    let backlog = ctx.store_call(move |s| s.notify_backlog(since, 50)).await?;
    for item in backlog {
        let emails = compose(&item, &config.public_url);
        let (run, source) = (item.run_id, item.source_id);
        ctx.store_call(move |s| s.notify_plan(run, source, &emails))
            .await?;
    }
    let subscribed = ctx
        .store_call(move |s| s.subscription_backlog(since, 50))
        .await?;
    if !subscribed.is_empty() {
        let emails: Vec<NewEmail> = subscribed
            .iter()
            .map(|item| compose_subscribed(item, &config.public_url))
            .collect();
        ctx.store_call(move |s| s.subscription_plan(&emails))
            .await?;
    }
    Ok(())
}

async fn send_due(
    ctx: &Arc<JobContext>,
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    config: &EmailConfig,
) -> Result<(), StoreError> {
    let now = Utc::now().timestamp_millis();
    let hold = HOLD.as_millis() as u64;
    let due = ctx
        .store_call(move |s| s.email_claim_due(now, hold, 20))
        .await?;
    for email in due {
        let attempt = email.attempts + 1;
        let (state, error, next) = match send(mailer, config, &email).await {
            Ok(()) => (DeliveryState::Delivered, None, 0),
            Err(e) if attempt >= config.attempts => (DeliveryState::Failed, Some(e), 0),
            Err(e) => {
                let wait = Backoff {
                    first: config.backoff,
                    factor: 4,
                    max: Duration::from_secs(3600),
                    jitter: 0.1,
                }
                .delay(attempt);
                let next = Utc::now().timestamp_millis() + wait.as_millis() as i64;
                (DeliveryState::Pending, Some(e), next)
            }
        };
        crate::telemetry::source_email(match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retrying",
            DeliveryState::Failed => "failed",
        });
        let id = email.id;
        ctx.store_call(move |s| s.email_record(id, attempt, state, error.as_deref(), next))
            .await?;
    }
    Ok(())
}

async fn send(
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    config: &EmailConfig,
    email: &DueEmail,
) -> Result<(), String> {
    let to: Mailbox = email
        .address
        .parse()
        .map_err(|e| format!("`{}` is not an address: {e}", email.address))?;
    let message = Message::builder()
        .from(config.smtp.from.clone())
        .to(to)
        .subject(email.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(email.body.clone())
        .map_err(|e| format!("cannot build the message: {e}"))?;
    mailer
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("the mail server: {e}"))
}
