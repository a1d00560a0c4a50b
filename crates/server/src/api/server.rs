//! Hosting the coordinator: open the store, migrate, recover, serve gRPC, shut down cleanly.
//! `baton serve` and the in-process quickstart both use [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::admission::{Admission, Place};
use super::grpc::codec::generated::coordinator_server::CoordinatorServer;
use super::grpc::codec::SizeLimited;
use super::{CoordinatorService, Limits};
use crate::api::auth::{AuthConfig, Authenticated};
use crate::coordinator::{Config, Coordinator};
use crate::registry::{Registry, RegistryConfig};
use crate::store::{self, StoreError, StoreOptions};
use crate::tls::{ServerTls, TlsError, TlsIncoming};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where to listen for gRPC; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`; `None` serves no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// `postgres://...` or `sqlite://path`.
    pub database_url: String,
    pub store: StoreOptions,
    /// Apply the schema migrations at start-up.
    pub migrate: bool,
    pub coordinator: Config,
    pub registry: RegistryConfig,
    pub limits: Limits,
    /// At shutdown, how long open requests may take to finish before they are cut off.
    pub drain: std::time::Duration,
    /// How long a client may take to send a request's headers on the HTTP port (or stay idle
    /// between requests), and to open its HTTP/2 connection on the gRPC port (the preface its
    /// first bytes carry); a slower connection is closed.
    pub header_timeout: std::time::Duration,
    /// Client connections open at once on the gRPC and HTTP ports together; one more is closed
    /// as it arrives (`api::admission`).
    pub max_client_connections: usize,
    /// Who may call what; [`AuthConfig::Disabled`] must be chosen explicitly.
    pub auth: AuthConfig,
    /// TLS on the gRPC and HTTP ports (mutual TLS on gRPC with a client CA); `None` is plain text.
    pub tls: Option<ServerTls>,
    /// Serve the web console at `/ui` on the HTTP port.
    pub console: bool,
}

impl ServeConfig {
    /// A coordinator on `listen` over the log at `database_url`, with every other setting at the
    /// defaults `baton serve` uses (one log writer on SQLite, a write connection per log writer):
    /// no HTTP port, migrations applied, no TLS, no console.
    /// Authentication is a parameter because turning it off must be a visible choice.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>, auth: AuthConfig) -> Self {
        let database_url = database_url.into();
        let mut coordinator = Config::default();
        // SQLite has one writer at a time: a second log writer would only wait for the lock.
        if store::is_sqlite_url(&database_url) {
            coordinator.log_writers = 1;
        }
        ServeConfig {
            listen,
            http_listen: None,
            store: StoreOptions {
                // Each log writer holds one connection of its own.
                write_connections: coordinator.log_writers as u32,
                ..StoreOptions::default()
            },
            database_url,
            migrate: true,
            coordinator,
            registry: RegistryConfig::default(),
            limits: Limits::default(),
            drain: DEFAULT_DRAIN,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            auth,
            tls: None,
            console: false,
        }
    }
}

/// How long open requests may take to finish at shutdown, by default.
pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client may take over a request's headers or its connection's preface, by default.
pub const DEFAULT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Client connections open at once on both ports, by default.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;

/// How long a gRPC connection may stay silent before the coordinator pings it (an HTTP/2
/// `PING`), and how long the answer may take before the connection is closed: a client whose
/// host vanished without closing its connections (a crash, a cut network) gives back its places
/// instead of holding them until the operating system gives up on the socket, hours later.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Calls one gRPC connection may have open at once (HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS`);
/// a client queues the rest. tonic advertises no limit unless told, so one connection could
/// open streams without end.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("recovery failed: {0}")]
    Recover(String),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// A running coordinator server.
pub struct Serving {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound HTTP address, if any.
    pub http_addr: Option<SocketAddr>,
    coordinator: Arc<Coordinator>,
    stop: CancellationToken,
    drain: std::time::Duration,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tls: bool,
}

impl Serving {
    /// `http://addr` (`https://` with TLS), for clients.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Stops accepting requests, stops the drivers (their progress is in the log), hands back
    /// unfinished transactions and returns.
    ///
    /// Requests in flight (a `Wait`, a `Start` with `wait`) get the drain time to finish while the
    /// drivers keep running; past it they are cut off.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let drain = self.drain;
        match tokio::time::timeout(drain, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "grpc server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "grpc server task failed"),
            Err(_) => {
                tracing::warn!(
                    ?drain,
                    "requests still open after the drain time; cutting them off"
                );
                self.server.abort();
            }
        }
        self.coordinator.shutdown().await;
    }
}

/// Opens the store, migrates if asked, resumes unfinished transactions and serves gRPC.
pub async fn serve(mut config: ServeConfig) -> Result<Serving, ServeError> {
    // Certificates first: a bad file is a start-up error before anything is opened or bound.
    let tls = match &config.tls {
        Some(tls) => Some(tls.start().await?),
        None => None,
    };
    let log = store::open(&config.database_url, &config.store).await?;
    if config.migrate {
        log.migrate().await?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    if config.coordinator.address.is_empty() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        config.coordinator.address = format!("{scheme}://{addr}");
    }
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let registry = Arc::new(Registry::new(log.clone(), config.registry.clone()));
    registry.start_tls().await?;
    let coordinator = Coordinator::new(config.coordinator.clone(), log, registry);
    let resumed = coordinator
        .recover()
        .await
        .map_err(|e| ServeError::Recover(e.to_string()))?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished transactions");
    }
    coordinator.run_background();

    let stop = CancellationToken::new();
    let max_message = config
        .limits
        .max_payload_bytes
        .saturating_mul(4)
        .max(4 << 20);
    let service = CoordinatorServer::new(CoordinatorService::new(
        coordinator.clone(),
        config.limits.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    match &config.auth {
        AuthConfig::Disabled => {
            tracing::info!("authentication disabled: every caller may call every method")
        }
        AuthConfig::Tokens(tokens) => {
            let names: Vec<&str> = tokens.specs().iter().map(|t| t.name.as_str()).collect();
            tracing::info!(tokens = ?names, "bearer-token authentication");
        }
    }
    let service = Authenticated::new(SizeLimited::new(service, max_message), config.auth.clone());
    let shutdown = stop.clone();
    let header_timeout = config.header_timeout;
    let admission = Admission::new(config.max_client_connections, coordinator.metrics());
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service);
    let shutdown = async move { shutdown.cancelled().await };
    let server = match &tls {
        // Each connection gets the certificate current when it arrives (see `crate::tls`).
        Some(tls) => {
            let tls = tls.clone();
            let incoming = TlsIncoming::new(listener, move || tls.grpc_acceptor())
                .map_err(|source| ServeError::Listen { addr, source })?
                .filter_map({
                    let admission = admission.clone();
                    move |accepted| GrpcConnection::admit(accepted, &admission, header_timeout)
                });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
        // No Nagle on accepted sockets, and an answer's frames written together
        // (`baton_tx::wire`).
        None => {
            let incoming = baton_tx::wire::incoming(listener).filter_map({
                let admission = admission.clone();
                move |accepted| GrpcConnection::admit(accepted, &admission, header_timeout)
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
    };
    if let Some(listener) = http_listener {
        let port = crate::api::http::HttpPort {
            coordinator: coordinator.clone(),
            limits: config.limits.clone(),
            auth: config.auth.clone(),
            console: config.console,
            header_timeout,
            admission,
            stop: stop.clone(),
        };
        let http_tls = tls.clone();
        tokio::spawn(async move {
            let result = match http_tls {
                Some(tls) => match TlsIncoming::new(listener, move || tls.http_acceptor()) {
                    Ok(incoming) => {
                        crate::api::http::serve(crate::api::http::HttpsListener(incoming), port)
                            .await
                    }
                    Err(e) => Err(e),
                },
                None => crate::api::http::serve(listener, port).await,
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "http server failed");
            }
        });
    }
    tracing::info!(%addr, ?http_addr, id = %config.coordinator.id, "coordinator serving");
    Ok(Serving {
        addr,
        http_addr,
        coordinator,
        stop,
        drain: config.drain,
        server,
        tls: tls.is_some(),
    })
}

/// An accepted gRPC connection: it holds its place among the client connections until it
/// closes, and must send the HTTP/2 preface within a time. Until its first [`PREFACE_LEN`]
/// bytes have arrived, a read that waits past the deadline fails, and the connection is closed.
/// After them the connection is h2's to keep or close. Without the deadline, a client that
/// connects and sends nothing held a connection and its task for as long as it liked.
struct GrpcConnection<T> {
    io: T,
    /// Preface bytes still to come, and the time they must have come by; `None` once they have.
    waiting: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
    _place: Place,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, every HTTP/2 connection's first bytes.
const PREFACE_LEN: usize = 24;

impl<T> GrpcConnection<T> {
    /// The connection just accepted with its place, its preface due `within`; `None` when every
    /// place is taken, and the connection, dropped, is closed. Accept errors pass through.
    fn admit(
        accepted: std::io::Result<T>,
        admission: &Admission,
        within: std::time::Duration,
    ) -> Option<std::io::Result<Self>> {
        let io = match accepted {
            Ok(io) => io,
            Err(error) => return Some(Err(error)),
        };
        let place = admission.admit()?;
        Some(Ok(GrpcConnection {
            io,
            waiting: Some((PREFACE_LEN, Box::pin(tokio::time::sleep(within)))),
            _place: place,
        }))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GrpcConnection<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((left, deadline)) = &mut this.waiting {
            match read {
                Poll::Ready(Ok(())) => {
                    *left = left.saturating_sub(buf.filled().len() - before);
                    if *left == 0 {
                        this.waiting = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent no HTTP/2 preface in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GrpcConnection<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: Connected> Connected for GrpcConnection<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
