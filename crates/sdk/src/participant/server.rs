//! Serving a [`Participant`] over gRPC, with a handle that owns the server task and shuts it down
//! gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use super::Participant;
use crate::proto::participant_server::ParticipantServer;
use crate::tls::{ServerReloader, ServerTls, TlsIncoming};

/// The server future, either over TLS or plain TCP.
type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Why a participant server could not start or register.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The coordinator to register with could not be reached.
    #[error("cannot reach coordinator {addr}")]
    Connect {
        /// The coordinator address as given.
        addr: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// The coordinator refused the registration.
    #[error("registration refused: {} ({:?})", .0.message(), .0.code())]
    Register(tonic::Status),
    /// The TLS files could not be read or are not valid.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

// By hand rather than `#[from]`, which would also make the status the error's `source` and print
// it twice in error reports.
impl From<tonic::Status> for ServeError {
    fn from(status: tonic::Status) -> Self {
        ServeError::Register(status)
    }
}

/// A running participant server. Dropping it stops the server without waiting; call
/// [`shutdown`](ServerHandle::shutdown) to wait for calls in flight.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    /// Stops the gRPC server.
    server_stop: CancellationToken,
    server: TaskTracker,
    /// Handler tasks, so shutdown waits for handlers whose caller went away.
    handlers: TaskTracker,
    /// Stops registration heartbeats (which then deregister).
    pub(super) registration_stop: CancellationToken,
    pub(super) registrations: TaskTracker,
    tls: bool,
}

impl Participant {
    /// Bind `addr` (such as `"127.0.0.1:0"`), serve the handlers there in a background task and
    /// return its handle.
    pub async fn serve(
        self,
        addr: impl ToSocketAddrs + ToString,
    ) -> Result<ServerHandle, ServeError> {
        self.serve_with_listener(bind(addr).await?)
    }

    /// Like [`serve`](Participant::serve), over TLS (mutual TLS with a client CA): the
    /// coordinator then calls the `https://` endpoint. The files are re-read every
    /// `tls.reload`; new connections use changed files.
    pub async fn serve_tls(
        self,
        addr: impl ToSocketAddrs + ToString,
        tls: &ServerTls,
    ) -> Result<ServerHandle, ServeError> {
        let tls = tls.start().await?;
        self.spawn(bind(addr).await?, Some(tls))
    }

    /// Serve the handlers on a listener the caller bound already.
    pub fn serve_with_listener(self, listener: TcpListener) -> Result<ServerHandle, ServeError> {
        self.spawn(listener, None)
    }

    fn spawn(
        self,
        listener: TcpListener,
        tls: Option<Arc<ServerReloader>>,
    ) -> Result<ServerHandle, ServeError> {
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: "listener".to_string(),
            source,
        })?;
        let handlers = TaskTracker::new();
        let service = ParticipantServer::new(self.into_dispatcher(handlers.clone()));
        let server_stop = CancellationToken::new();
        let server = TaskTracker::new();
        let stop = server_stop.clone();
        let router = Server::builder().add_service(service);
        let secure = tls.is_some();
        let serving: Serving =
            match tls {
                Some(tls) => {
                    let incoming = TlsIncoming::new(listener, move || tls.grpc_acceptor())
                        .map_err(|source| ServeError::Bind {
                            addr: addr.to_string(),
                            source,
                        })?;
                    Box::pin(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
                }
                None => {
                    let incoming = crate::wire::incoming(listener);
                    Box::pin(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
                }
            };
        server.spawn(async move {
            let result = serving.await;
            if let Err(error) = result {
                tracing::error!(%addr, %error, "participant server stopped");
            }
        });
        server.close();
        Ok(ServerHandle {
            addr,
            server_stop,
            server,
            handlers,
            registration_stop: CancellationToken::new(),
            registrations: TaskTracker::new(),
            tls: secure,
        })
    }
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: impl ToSocketAddrs + ToString) -> Result<TcpListener, ServeError> {
    let shown = addr.to_string();
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: shown,
            source,
        })
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a coordinator (or a step's `endpoint`) uses to reach this server, such as
    /// `http://127.0.0.1:9000` (`https://` when serving TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stop gracefully: deregister from coordinators first (so no new calls are routed here),
    /// then stop accepting connections, and wait for the calls in flight to finish.
    pub async fn shutdown(self) {
        self.registration_stop.cancel();
        self.registrations.close();
        self.registrations.wait().await;
        self.server_stop.cancel();
        self.server.wait().await;
        self.handlers.close();
        self.handlers.wait().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // A forgotten handle must not leave a server running with no owner.
        self.registration_stop.cancel();
        self.server_stop.cancel();
    }
}
