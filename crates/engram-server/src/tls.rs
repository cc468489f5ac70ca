//! TLS for both listeners (rustls). The certificate and key come from PEM
//! files (`security.tls_cert`, `security.tls_key`) and are read again on
//! SIGHUP: new connections get the new certificate, open ones keep theirs.
//!
//! The accept loop here does the handshakes off the listener's task (a
//! client that connects and says nothing cannot hold up the next one),
//! each within [`HANDSHAKE_TIMEOUT`]. The gRPC listener hands the TLS
//! streams to tonic; the HTTP listener serves them with hyper (HTTP/1.1 with
//! upgrades, for the WebSocket stream).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; a connection beyond it is
/// closed at once (logged), so a flood of clients that connect and say
/// nothing holds a bounded amount of memory, each for at most
/// [`HANDSHAKE_TIMEOUT`].
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The server's certificate and key, swapped on reload.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Reads the PEM files.
    ///
    /// # Errors
    /// Unreadable files, no certificate, no private key, or a key rustls
    /// cannot use; the message names the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let current = read_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again. On error the certificate in use stays.
    ///
    /// # Errors
    /// As [`CertStore::load`].
    pub fn reload(&self) -> Result<(), String> {
        let fresh = read_certified_key(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// A rustls server configuration that takes its certificate from this
    /// store, offering `alpn` (e.g. `h2` for gRPC).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        // ring, not aws-lc-rs: no cmake or C toolchain beyond what ring
        // needs. rustls marks it deprecated only for lacking post-quantum
        // key exchange (X25519MLKEM768), which no engram client needs yet.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| format!("reading TLS file {}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "TLS certificate {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_pem = read(key)?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("TLS key {}: {e}", key.display()))?
        .ok_or_else(|| format!("TLS key {}: no PEM private key in it", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "TLS key {} does not belong to certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// Accepts TCP connections on `listener` and yields them once their TLS
/// handshake is done. Failed or slow handshakes are logged (debug) and
/// dropped. Ends when `stop` turns true.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    keepalive: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    listener_name: &'static str,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let pending = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment
                    // rather than spin.
                    tracing::warn!(listener = listener_name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(
                    listener = listener_name,
                    %peer,
                    limit = MAX_PENDING_HANDSHAKES,
                    "too many TLS handshakes in progress; connection closed"
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Some(k) = keepalive {
                let sock = socket2::SockRef::from(&tcp);
                let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(k));
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = listener_name, %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::debug!(listener = listener_name, %peer, "TLS handshake timed out")
                    }
                }
            });
        }
    });
    rx
}

/// Writes a fresh CA and a server certificate for `hosts` signed by it
/// into `dir`: `ca.pem`, `server.pem` (the server certificate, then the
/// CA), `server.key`. For tests and first setups (`engram tls generate`).
///
/// # Errors
/// Certificate generation or writing the files.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| format!("generating certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "engram test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(err)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("engram", String::as_str),
    );
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("ca.pem", ca.pem())?;
    write("server.pem", format!("{}{}", cert.pem(), ca.pem()))?;
    write("server.key", key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("server.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("restricting {}: {e}", p.display()))?;
    }
    Ok(())
}
