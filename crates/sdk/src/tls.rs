//! TLS for every connection Baton makes or takes: the coordinator's gRPC and HTTP ports, the
//! participant SDK's server, and the clients of both (rustls with the `ring` provider).
//!
//! Certificates, keys and CAs come from PEM files. Servers re-read them every
//! [`ServerTls::reload`]: when the contents change the new files are checked and, if good, used
//! for every connection accepted after that; a bad new file is logged and the old certificate
//! kept. The coordinator's calls to participants do the same with their CA and client identity,
//! so rotating a certificate needs no restart. The SDK clients read their files when they connect.
//!
//! Trust comes only from the CA files given: no system or bundled roots.
//!
//! Shared with the coordinator (`baton-server`), which serves its ports and calls participants
//! with the same code; applications need [`ClientTls`] and participants [`ServerTls`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How often servers look at their certificate files by default.
pub const DEFAULT_RELOAD: Duration = Duration::from_secs(5);
/// A client that has not finished its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; past it, accepting waits.
const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// PEM files larger than this are refused (a certificate chain is a few kilobytes).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// What a PEM file is for; errors name it with the file's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A certificate chain this side presents (server, or client identity).
    Cert,
    /// The private key of that certificate.
    Key,
    /// The CA a server checks client certificates against (mutual TLS).
    ClientCa,
    /// The CA a client checks the server's certificate against.
    Ca,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Cert => "certificate",
            Role::Key => "private key",
            Role::ClientCa => "client CA",
            Role::Ca => "CA certificate",
        })
    }
}

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{role} file {}: cannot read: {source}", .path.display())]
    Read {
        role: Role,
        path: PathBuf,
        source: io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{role} file {}: {reason}", .path.display())]
    Invalid {
        role: Role,
        path: PathBuf,
        reason: String,
    },
}

impl TlsError {
    /// Which file the error is about.
    pub fn role(&self) -> Role {
        match self {
            TlsError::Read { role, .. } | TlsError::Invalid { role, .. } => *role,
        }
    }
}

/// A server's certificate files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With a CA here, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// TLS on a server: its files and how often they are re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub files: TlsFiles,
    /// How often the files are checked for changes.
    pub reload: Duration,
}

impl ServerTls {
    /// TLS with `cert` and `key`, no client certificates, re-read every [`DEFAULT_RELOAD`].
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTls {
            files: TlsFiles {
                cert: cert.into(),
                key: key.into(),
                client_ca: None,
            },
            reload: DEFAULT_RELOAD,
        }
    }

    /// Require client certificates signed by the CA in `ca` (mutual TLS).
    pub fn client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.files.client_ca = Some(ca.into());
        self
    }

    /// Check the files for changes this often.
    pub fn reload(mut self, every: Duration) -> Self {
        self.reload = every;
        self
    }

    /// Reads and checks the files now (for start-up errors before anything binds).
    pub fn check(&self) -> Result<(), TlsError> {
        let contents = read_all_blocking(&self.paths())?;
        build_server(&self.paths(), &contents).map(|_| ())
    }

    fn paths(&self) -> Vec<(Role, PathBuf)> {
        let mut paths = vec![
            (Role::Cert, self.files.cert.clone()),
            (Role::Key, self.files.key.clone()),
        ];
        if let Some(ca) = &self.files.client_ca {
            paths.push((Role::ClientCa, ca.clone()));
        }
        paths
    }
}

/// TLS on a client: the CA that signed the server's certificate and, for servers that want
/// mutual TLS, this client's own certificate and key. Used for `https://` addresses only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// Certificate and key presented to servers that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How often long-lived users (the coordinator's participant channels) re-read the files.
    pub reload: Duration,
}

impl ClientTls {
    /// Trust servers whose certificate the CA in `ca` signed.
    pub fn new(ca: impl Into<PathBuf>) -> Self {
        ClientTls {
            ca: ca.into(),
            identity: None,
            reload: DEFAULT_RELOAD,
        }
    }

    /// Present this certificate and key to servers that ask for one (mutual TLS).
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Re-read the files this often where connections are long-lived.
    pub fn reload(mut self, every: Duration) -> Self {
        self.reload = every;
        self
    }

    /// Reads and checks the files now.
    pub fn check(&self) -> Result<(), TlsError> {
        let contents = read_all_blocking(&self.paths())?;
        build_client(&self.paths(), &contents).map(|_| ())
    }

    /// Reads and checks the files and returns tonic's client configuration.
    pub async fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let paths = self.paths();
        let contents = read_all(&paths).await?;
        build_client(&paths, &contents)
    }

    fn paths(&self) -> Vec<(Role, PathBuf)> {
        let mut paths = vec![(Role::Ca, self.ca.clone())];
        if let Some((cert, key)) = &self.identity {
            paths.push((Role::Cert, cert.clone()));
            paths.push((Role::Key, key.clone()));
        }
        paths
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and checking PEM files.

fn read_all_blocking(paths: &[(Role, PathBuf)]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|(role, path)| {
            check_size(*role, path, std::fs::metadata(path).map(|m| m.len()))?;
            std::fs::read(path).map_err(|source| read_error(*role, path, source))
        })
        .collect()
}

async fn read_all(paths: &[(Role, PathBuf)]) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut contents = Vec::with_capacity(paths.len());
    for (role, path) in paths {
        check_size(
            *role,
            path,
            tokio::fs::metadata(path).await.map(|m| m.len()),
        )?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| read_error(*role, path, source))?;
        contents.push(bytes);
    }
    Ok(contents)
}

fn check_size(role: Role, path: &Path, len: io::Result<u64>) -> Result<(), TlsError> {
    match len {
        Ok(len) if len > MAX_PEM_BYTES => Err(invalid(
            role,
            path,
            format!("{len} bytes exceed the limit of {MAX_PEM_BYTES}"),
        )),
        Ok(_) => Ok(()),
        Err(source) => Err(read_error(role, path, source)),
    }
}

fn read_error(role: Role, path: &Path, source: io::Error) -> TlsError {
    TlsError::Read {
        role,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(role: Role, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        role,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn certs(role: Role, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(role, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(role, path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(Role::Key, path, "no PEM private key found")
        }
        e => invalid(Role::Key, path, format!("not a valid PEM private key: {e}")),
    })
}

fn roots(role: Role, path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(role, path, pem)? {
        roots
            .add(cert)
            .map_err(|e| invalid(role, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configurations built from one version of a server's files: the gRPC port speaks HTTP/2,
/// the HTTP port HTTP/1.1 (and never asks for client certificates, so that probes and scrapers
/// without one still reach `/healthz` and `/metrics`).
struct ServerConfigs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

fn build_server(
    paths: &[(Role, PathBuf)],
    contents: &[Vec<u8>],
) -> Result<ServerConfigs, TlsError> {
    let (cert_path, key_path) = (&paths[0].1, &paths[1].1);
    let chain = certs(Role::Cert, cert_path, &contents[0])?;
    let key = key(key_path, &contents[1])?;
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(Role::Cert, cert_path, e.to_string()))
    };
    let mismatch = |e: rustls::Error| {
        invalid(
            Role::Key,
            key_path,
            format!("does not fit the certificate: {e}"),
        )
    };
    let mut grpc = match paths.get(2) {
        Some((role, ca_path)) => {
            let roots = roots(*role, ca_path, &contents[2])?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| invalid(*role, ca_path, e.to_string()))?;
            builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(mismatch)?
        }
        None => builder()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?,
    };
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerConfigs {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
    })
}

fn build_client(
    paths: &[(Role, PathBuf)],
    contents: &[Vec<u8>],
) -> Result<ClientTlsConfig, TlsError> {
    // Parse here so that a bad file is an error now, not a failed handshake later.
    let ca_path = &paths[0].1;
    roots(Role::Ca, ca_path, &contents[0])?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&contents[0]));
    if let (Some((_, cert_path)), Some((_, key_path))) = (paths.get(1), paths.get(2)) {
        let chain = certs(Role::Cert, cert_path, &contents[1])?;
        let key = key(key_path, &contents[2])?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| {
                invalid(
                    Role::Key,
                    key_path,
                    format!("does not fit the certificate: {e}"),
                )
            })?;
        config = config.identity(Identity::from_pem(&contents[1], &contents[2]));
    }
    Ok(config)
}

/// The same client files as a rustls configuration, for HTTP/JSON participants
/// (src/transport/http.rs), which speak HTTP/1.1 over rustls directly rather than through tonic.
fn build_client_rustls(
    paths: &[(Role, PathBuf)],
    contents: &[Vec<u8>],
) -> Result<rustls::ClientConfig, TlsError> {
    let ca_path = &paths[0].1;
    let roots = roots(Role::Ca, ca_path, &contents[0])?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(Role::Ca, ca_path, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (paths.get(1), paths.get(2)) {
        (Some((_, cert_path)), Some((_, key_path))) => {
            let chain = certs(Role::Cert, cert_path, &contents[1])?;
            let key = key(key_path, &contents[2])?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid(
                    Role::Key,
                    key_path,
                    format!("does not fit the certificate: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Reloading.

/// Builds settings from the files' paths (for messages) and their contents.
type Build<T> = fn(&[(Role, PathBuf)], &[Vec<u8>]) -> Result<T, TlsError>;

/// Settings built from a set of files, rebuilt when the files' contents change. A watcher task
/// polls the files while anything holds the `Reloading`; it stops when the last holder drops it.
pub struct Reloading<T> {
    paths: Vec<(Role, PathBuf)>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    /// The file contents last looked at (good or bad), so a bad file is reported once.
    seen: Mutex<Vec<Vec<u8>>>,
    /// The last read error logged, so a file that stays missing is reported once.
    read_error: Mutex<Option<String>>,
    generation: AtomicU64,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    async fn load(
        paths: Vec<(Role, PathBuf)>,
        build: Build<T>,
        every: Duration,
    ) -> Result<Arc<Self>, TlsError> {
        let contents = read_all(&paths).await?;
        let value = build(&paths, &contents)?;
        let this = Arc::new(Reloading {
            paths,
            build,
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(contents),
            read_error: Mutex::new(None),
            generation: AtomicU64::new(0),
        });
        tokio::spawn(watch(
            Arc::downgrade(&this),
            every.max(Duration::from_millis(10)),
        ));
        Ok(this)
    }

    /// The settings built from the newest good files.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts successful reloads; changes whenever [`current`](Self::current) does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Looks at the files once; rebuilds and swaps if they changed and are good. Returns whether
    /// the settings changed.
    pub async fn check_now(&self) -> bool {
        let contents = match read_all(&self.paths).await {
            Ok(contents) => contents,
            Err(error) => {
                let message = error.to_string();
                let mut last = self.read_error.lock().unwrap_or_else(|e| e.into_inner());
                if last.as_deref() != Some(message.as_str()) {
                    tracing::warn!(%error, "tls files unreadable; keeping the current certificate");
                    *last = Some(message);
                }
                return false;
            }
        };
        *self.read_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == contents {
                return false;
            }
            *seen = contents.clone();
        }
        match (self.build)(&self.paths, &contents) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(files = ?self.file_names(), "tls files changed; new connections use them");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "tls files changed but are not usable; keeping the current certificate");
                false
            }
        }
    }

    fn file_names(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect()
    }
}

async fn watch<T: Send + Sync + 'static>(this: Weak<Reloading<T>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(this) = this.upgrade() else { break };
        this.check_now().await;
    }
}

/// A server's TLS settings, kept current with its files.
pub type ServerReloader = Reloading<ServerConfigsHandle>;

/// Opaque holder of a server's built configurations (see [`ServerTls`]).
pub struct ServerConfigsHandle(ServerConfigs);

fn build_server_handle(
    paths: &[(Role, PathBuf)],
    contents: &[Vec<u8>],
) -> Result<ServerConfigsHandle, TlsError> {
    build_server(paths, contents).map(ServerConfigsHandle)
}

impl ServerTls {
    /// Reads and checks the files, and keeps re-reading them every [`ServerTls::reload`].
    pub async fn start(&self) -> Result<Arc<ServerReloader>, TlsError> {
        Reloading::load(self.paths(), build_server_handle, self.reload).await
    }
}

impl ClientTls {
    /// Reads and checks the files, and keeps re-reading them every [`ClientTls::reload`].
    pub async fn start(&self) -> Result<Arc<Reloading<ClientTlsConfig>>, TlsError> {
        Reloading::load(self.paths(), build_client, self.reload).await
    }

    /// Like [`ClientTls::start`], as a rustls configuration (for HTTP/JSON participants).
    pub async fn start_rustls(&self) -> Result<Arc<Reloading<rustls::ClientConfig>>, TlsError> {
        Reloading::load(self.paths(), build_client_rustls, self.reload).await
    }
}

impl Reloading<ServerConfigsHandle> {
    /// An acceptor for the gRPC port (HTTP/2, client certificates if configured).
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().0.grpc.clone())
    }

    /// An acceptor for the HTTP port (HTTP/1.1, no client certificates).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().0.http.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting.

/// Aborts the task when dropped, so a listener's accept loop lives exactly as long as its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections accepted on a TCP listener after their TLS handshake, each with the acceptor
/// current when it arrived. A [`Stream`](tokio_stream::Stream) for tonic's
/// `serve_with_incoming_shutdown`, and [`TlsIncoming::accept`] for an HTTP server.
///
/// Handshakes run concurrently in a task that lives as long as this value; a client that fails
/// its handshake or takes longer than 10 s is dropped (logged at debug) and never reaches the
/// server. Accepted sockets have `TCP_NODELAY` set.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _task: AbortOnDrop,
}

impl TlsIncoming {
    /// Accept on `listener`, calling `acceptor` for each new connection.
    pub fn new(
        listener: TcpListener,
        acceptor: impl Fn() -> TlsAcceptor + Send + 'static,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsIncoming {
            accepted,
            local,
            _task: AbortOnDrop(task),
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: impl Fn() -> TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    // The last accept failed for want of a resource (its warning is logged).
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) if crate::wire::peer_gone(&error) => continue,
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin, and
                        // say so once per run of failures (as `crate::wire::incoming` does).
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(
                                %error,
                                "accepting a connection failed; trying again after a pause until it succeeds"
                            );
                        }
                        tokio::time::sleep(crate::wire::ACCEPT_PAUSE).await;
                        continue;
                    }
                };
                if std::mem::take(&mut failing) {
                    tracing::info!("accepting connections again");
                }
                // No Nagle: a small response would otherwise wait for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor();
                let tx = tx.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        }
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

impl TlsIncoming {
    /// The next connection whose handshake succeeded, with its peer's address. Waits forever
    /// once the accept loop has ended (it ends only when this value is dropped).
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.accepted.recv().await {
            Some(next) => next,
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ServerTls::new(&missing, &missing).check().unwrap_err();
        assert_eq!(err.role(), Role::Cert);
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(err.to_string().starts_with("certificate file"), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all").unwrap();
        let err = ClientTls::new(&junk).check().unwrap_err();
        assert_eq!(err.role(), Role::Ca);
        assert!(
            err.to_string().contains("no PEM certificate found"),
            "{err}"
        );
    }
}
