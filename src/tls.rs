//! Outbound TLS: the one rustls set-up (the `ring` provider) for every connection sluice opens —
//! URL sources and webhooks over `https://`, e-mail over `smtps://` or STARTTLS, and the CLI's
//! client.
//!
//! Trusted roots: the system's store (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured), or
//! Mozilla's bundle compiled in when the system has none, plus the PEM certificates of
//! `--tls-ca-file` (an internal CA, a test server's self-signed certificate). The extra roots are
//! set once at start-up ([`set_extra_roots`]) and read by every client built afterwards.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

static EXTRA_ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();

/// Reads `--tls-ca-file`: every certificate in the PEM file becomes a trusted root. Call once,
/// before any client is built.
pub fn set_extra_roots(path: &Path) -> Result<usize, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--tls-ca-file {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-ca-file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-ca-file {}: no PEM certificate in the file",
            path.display()
        ));
    }
    let n = certs.len();
    EXTRA_ROOTS
        .set(certs)
        .map_err(|_| "--tls-ca-file was set twice".to_string())?;
    Ok(n)
}

/// The roots `--tls-ca-file` added (empty without one).
pub fn extra_roots() -> &'static [CertificateDer<'static>] {
    EXTRA_ROOTS.get().map(Vec::as_slice).unwrap_or_default()
}

/// The system's roots, or Mozilla's when the system has none; the extra roots on top.
fn roots() -> RootCertStore {
    static BASE: OnceLock<RootCertStore> = OnceLock::new();
    let mut store = BASE
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(native.certs);
            if store.is_empty() {
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            store
        })
        .clone();
    store.add_parsable_certificates(extra_roots().iter().cloned());
    store
}

/// The TLS client configuration every HTTPS connection uses.
// rustls deprecates its ring provider for lacking post-quantum key exchange; aws-lc-rs has it
// but costs a 2-minute C build on CI's 2 cores (NOTES-stack.md), and russh already builds ring.
#[allow(deprecated)]
pub fn client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots())
        .with_no_client_auth()
}

/// A `reqwest` client builder with sluice's TLS set-up. Every client is built from this one:
/// reqwest is compiled without a TLS provider of its own.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(client_config())
}

/// TLS parameters for an SMTP connection to `host` (lettre builds its own rustls
/// configuration from the same roots: the system's or Mozilla's, plus the extra ones).
pub fn smtp_parameters(
    host: &str,
) -> Result<lettre::transport::smtp::client::TlsParameters, String> {
    use lettre::transport::smtp::client::{CertificateStore, TlsParameters};
    let mut builder = TlsParameters::builder(host.to_string());
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        builder = builder.certificate_store(CertificateStore::WebpkiRoots);
    }
    for cert in extra_roots() {
        let cert = lettre::transport::smtp::client::Certificate::from_der(cert.to_vec())
            .map_err(|e| format!("--tls-ca-file: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| format!("TLS for {host}: {e}"))
}

/// Why a TLS handshake failed (an unknown issuer, a name mismatch, an expired certificate), when
/// that is what ended the request: reqwest's own message says only "error sending request".
pub fn handshake_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // tokio-rustls wraps the rustls error in an io::Error, and reqwest that in another;
        // an io::Error's `source()` skips what it wraps.
        let mut io = err.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        next = err.source();
    }
    None
}

/// The innermost cause of an error, which names what failed (a refused connection, a reset),
/// prefixed `TLS:` for a failed handshake.
pub fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(tls) = handshake_failure(e) {
        return format!("TLS: {tls}");
    }
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}
