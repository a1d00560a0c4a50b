//! The coordinator's HTTP port: `/healthz` (the process runs), `/readyz` (it takes new work: its
//! lease is current, it is not draining, and the database answers) and `/metrics` (Prometheus
//! text). HTTP/1 on its own listener, next to the gRPC port; HTTPS when the
//! coordinator has TLS (never with client certificates, so probes and scrapers reach it).
//!
//! The same port serves the HTTP/JSON client API under `/v1` (`api`): each route turns its JSON
//! into the gRPC request message and calls the gRPC service itself, so validation, limits and
//! roles are the gRPC ones, not a second copy.
//!
//! Unless turned off (`baton serve --ui off`), the port also serves the web console under `/ui`
//! (`console`): pages whose script reads that same `/v1` API with the user's token.

mod api;
mod console;
mod json;
mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::api::admission::Admission;
use crate::api::auth::AuthConfig;
use crate::api::Limits;
use crate::coordinator::Coordinator;

/// What the HTTP port serves and how, whatever its listener.
pub struct HttpPort {
    pub coordinator: Arc<Coordinator>,
    /// The gRPC server's, so the JSON API accepts and refuses exactly what gRPC does.
    pub limits: Limits,
    pub auth: AuthConfig,
    /// Serve the web console at `/ui`.
    pub console: bool,
    /// A connection that takes longer than this to send a request's headers, or stays idle this
    /// long between requests, is closed: a client cannot hold a connection (and its task) by
    /// sending nothing.
    pub header_timeout: Duration,
    /// The places of client connections, shared with the gRPC port.
    pub(crate) admission: Arc<Admission>,
    /// Cancelled to stop accepting; open requests then finish.
    pub stop: CancellationToken,
}

/// Serves the HTTP endpoints on `listener` (a TCP listener, or [`HttpsListener`] for HTTPS) until
/// `port.stop` is cancelled, then lets open requests finish.
pub async fn serve<L>(mut listener: L, port: HttpPort) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let HttpPort {
        coordinator,
        limits,
        auth,
        console,
        header_timeout,
        admission,
        stop,
    } = port;
    let api = api::router(coordinator.clone(), limits, auth, stop.clone());
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(coordinator);
    if console {
        app = app.merge(console::router());
    }
    let app = app.merge(api);
    // axum's own `serve` sets no timer, so hyper's header timeout would not apply.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let open = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (io, _peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Every place taken: dropping the connection closes it.
        let Some(place) = admission.admit() else {
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            tower_service::Service::call(&mut app.clone(), request)
        });
        let connection =
            open.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended");
            }
            drop(place);
        });
    }
    open.shutdown().await;
    Ok(())
}

async fn ready(State(co): State<Arc<Coordinator>>) -> (StatusCode, String) {
    if co.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    if !co.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "lease lost: the database does not answer\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), co.store().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database: no answer within 2 s\n".into(),
        ),
    }
}

async fn metrics(State(co): State<Arc<Coordinator>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            crate::coordinator::metrics::CONTENT_TYPE,
        )],
        co.metrics().render(co.in_flight(), co.is_ready())
            + &crate::coordinator::metrics::render_pool(co.store().pool_stats()),
    )
}

/// TLS connections for the HTTP port: the SDK's [`TlsIncoming`](baton_tx::tls::TlsIncoming) as an
/// axum listener.
pub struct HttpsListener(pub baton_tx::tls::TlsIncoming);

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}
