//! TLS on the client listener (`--tls-cert`, `--tls-key`): HTTPS, WSS and long polls over
//! rustls.
//!
//! The certificate is reloaded when its files change on disk (a renewed certificate, a rotated
//! Kubernetes Secret, which the kubelet swaps atomically in the mounted volume): a background
//! loop re-reads both files every `--tls-reload-seconds` and swaps the certificate when they
//! changed and still make a valid pair. New handshakes get the new certificate; connections
//! already open keep their session. A pair that does not load (half-written files, a key that
//! does not match) is logged and the previous certificate stays in use.
//!
//! A client that speaks plain HTTP to the TLS port gets a `400` saying so, then the connection
//! is closed ([`refuse_plain_http`]).

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// First byte of every TLS record carrying a handshake (a ClientHello starts with it).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The served certificate, reloadable from its PEM files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents `current` was made from (a reload with the same bytes is a no-op).
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

/// Parse a PEM certificate chain and private key into a checked pair. Pure.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate PEM")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no CERTIFICATE block in the certificate file"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the private key PEM")?;
    CertifiedKey::from_der(chain, key, provider)
        .context("the private key does not fit the certificate")
}

impl ReloadingCert {
    /// Load the pair once; an error here stops the server from starting.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        // The binary installs ring at start; a library user may not have installed one.
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let cert = std::fs::read(cert_path)
            .with_context(|| format!("--tls-cert {}", cert_path.display()))?;
        let key =
            std::fs::read(key_path).with_context(|| format!("--tls-key {}", key_path.display()))?;
        let ck = certified_key(&cert, &key, &provider).with_context(|| {
            format!(
                "TLS certificate {} / key {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(ck)),
            loaded: Mutex::new((cert, key)),
        }))
    }

    /// Re-read the files; swap the certificate when they changed. `Ok(true)`: swapped.
    pub async fn reload(&self) -> anyhow::Result<bool> {
        let cert = tokio::fs::read(&self.cert_path)
            .await
            .with_context(|| format!("reading {}", self.cert_path.display()))?;
        let key = tokio::fs::read(&self.key_path)
            .await
            .with_context(|| format!("reading {}", self.key_path.display()))?;
        {
            let loaded = self.loaded.lock();
            if loaded.0 == cert && loaded.1 == key {
                return Ok(false);
            }
        }
        let ck = certified_key(&cert, &key, &self.provider)?;
        *self.current.write() = Arc::new(ck);
        *self.loaded.lock() = (cert, key);
        Ok(true)
    }

    /// The end-entity certificate now served (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().cert[0].clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The acceptor of the client listener: TLS 1.2 and 1.3, no client certificates, ALPN `h2`
/// and `http/1.1` (WebSockets use HTTP/1.1 upgrades).
pub fn acceptor(cert: Arc<ReloadingCert>) -> anyhow::Result<TlsAcceptor> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(cert.provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Check the files every `every` until `stop`, swapping in a changed certificate.
pub async fn reload_loop(cert: Arc<ReloadingCert>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        match cert.reload().await {
            Ok(true) => {
                tracing::info!(cert = %cert.cert_path.display(), "TLS certificate reloaded")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(
                cause = format!("{e:#}"),
                "TLS certificate files changed but do not load; still serving the previous one"
            ),
        }
    }
}

/// What the first bytes of a connection to the TLS port turned out to be.
pub enum Accepted {
    Tls(Box<TlsStream<TcpStream>>),
    /// Not TLS (answered with a 400 when it looked like HTTP), or a failed handshake.
    Refused,
}

/// The TLS handshake of one accepted connection, within `timeout`. A client that speaks plain
/// HTTP gets [`refuse_plain_http`]'s answer instead.
pub async fn accept(acceptor: &TlsAcceptor, stream: TcpStream, timeout: Duration) -> Accepted {
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) => {}
            _ => return Accepted::Refused,
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plain_http(stream).await;
            return Accepted::Refused;
        }
        match acceptor.accept(stream).await {
            Ok(s) => Accepted::Tls(Box::new(s)),
            Err(e) => {
                tracing::debug!(cause = %e, "TLS handshake failed");
                Accepted::Refused
            }
        }
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .unwrap_or(Accepted::Refused)
}

/// The body of the answer to plain HTTP on the TLS port.
pub const PLAIN_HTTP_BODY: &str =
    "This port speaks TLS: connect with https:// or wss:// instead.\n";

/// The whole answer to plain HTTP on the TLS port (a `400`, then the connection closes).
pub fn plain_http_answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// Answer a plain-HTTP request with a `400` and close: read what the client sent (so the close
/// is a FIN, not a reset that could lose the answer), write the answer, shut down, and wait
/// briefly for the client to close.
async fn refuse_plain_http(mut stream: TcpStream) {
    let mut buf = [0u8; 8192];
    let _ = stream.read(&mut buf).await;
    if stream
        .write_all(plain_http_answer().as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_has_the_right_length() {
        let a = plain_http_answer();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, PLAIN_HTTP_BODY);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let p = rustls::crypto::ring::default_provider();
        let e = certified_key(b"nope", b"nope", &p).unwrap_err();
        assert!(format!("{e:#}").contains("CERTIFICATE"), "{e:#}");
    }
}
