//! The gRPC channel for plain-text (`http://`) endpoints: unary calls over HTTP/2 connections
//! driven by `h2` directly.
//!
//! tonic's `Channel` passes every call through a buffer task, and hyper's client spawns one more
//! task per request to wait for its response; each hop is a task wake-up, often on the other
//! core. Here the calling task sends the request on the connection and awaits the response itself,
//! so the connection's task is the only other one a call touches. `https://` endpoints keep
//! tonic's `Channel`, which does TLS (see [`GrpcChannel`]).
//!
//! A connection is made on first use and again after it breaks (by the next call); calls that
//! were in flight on a broken connection fail with `UNAVAILABLE`, which the engine retries.
//! The connection's task PINGs the peer every [`KEEPALIVE_INTERVAL`] and drops the connection when
//! no PONG comes within [`KEEPALIVE_TIMEOUT`] (a peer that vanished without a FIN or RST, so
//! calls fail instead of hanging). The task belongs to the channel: it is aborted when the last
//! clone of the channel (and the last response body read from it) is dropped.
//!
//! Which channel `http://` endpoints get is a process-wide choice ([`ChannelKind`]): set once by
//! [`set_plaintext_channel`] (`baton bench --grpc-channel`), else read once from the environment
//! variable `BATON_GRPC_CHANNEL` (`h2` or `tonic`), else `h2`.
//!
//! Shared with the coordinator (`baton-server`), which calls participants through it; hidden from
//! the SDK's documentation because applications never use it directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::http::uri::{Authority, PathAndQuery, Scheme};
use ::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Flow-control windows offered to the peer: large enough that messages up to the size limits
/// never wait for a window update.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 22;

/// The environment variable that picks the channel for `http://` endpoints: `h2` or `tonic`.
pub const CHANNEL_ENV: &str = "BATON_GRPC_CHANNEL";

/// How often an HTTP/2 connection, idle or busy, is PINGed (both channel kinds).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC channel used for plain-text (`http://`) endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelKind {
    /// [`H2Channel`]: unary calls over `h2` directly.
    #[default]
    H2,
    /// tonic's `Channel`, as for `https://`.
    Tonic,
}

impl std::str::FromStr for ChannelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "h2" => Ok(ChannelKind::H2),
            "tonic" => Ok(ChannelKind::Tonic),
            other => Err(format!("expected h2 or tonic, not {other:?}")),
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelKind::H2 => "h2",
            ChannelKind::Tonic => "tonic",
        })
    }
}

static PLAINTEXT: OnceLock<ChannelKind> = OnceLock::new();

/// Sets the channel for `http://` endpoints for the rest of the process. Call it before any
/// channel is made; returns whether `kind` is now the choice (false: another was already fixed).
pub fn set_plaintext_channel(kind: ChannelKind) -> bool {
    *PLAINTEXT.get_or_init(|| kind) == kind
}

/// The channel for `http://` endpoints: as set by [`set_plaintext_channel`], else from
/// [`CHANNEL_ENV`] (read once; an unknown value is logged and ignored), else [`ChannelKind::H2`].
pub fn plaintext_channel() -> ChannelKind {
    *PLAINTEXT.get_or_init(|| match std::env::var(CHANNEL_ENV) {
        Ok(value) => value.parse().unwrap_or_else(|e| {
            tracing::warn!(%e, "ignoring {CHANNEL_ENV}");
            ChannelKind::default()
        }),
        Err(_) => ChannelKind::default(),
    })
}

/// `endpoint` with HTTP/2 keepalive: a PING every [`KEEPALIVE_INTERVAL`], also while idle, and
/// the connection dropped when no answer comes within [`KEEPALIVE_TIMEOUT`].
pub fn with_keepalive(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// A channel to one gRPC endpoint: tonic's `Channel` (used for TLS) or a [`H2Channel`].
/// Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub enum GrpcChannel {
    Tonic(Channel),
    H2(H2Channel),
}

impl GrpcChannel {
    /// A lazy channel to the plain-text endpoint `uri` (`http://host[:port]`), of the kind
    /// [`plaintext_channel`] picks. `None` when the URI is not plain-text HTTP with a host.
    /// Needs a Tokio runtime (tonic's channel spawns its task here).
    pub fn plaintext(uri: &Uri, connect_timeout: Duration) -> Option<GrpcChannel> {
        match plaintext_channel() {
            ChannelKind::H2 => H2Channel::lazy(uri, connect_timeout).map(GrpcChannel::H2),
            ChannelKind::Tonic => {
                if uri.scheme() != Some(&Scheme::HTTP) || uri.host().is_none_or(str::is_empty) {
                    return None;
                }
                let endpoint = Endpoint::from(uri.clone())
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true);
                Some(GrpcChannel::Tonic(with_keepalive(endpoint).connect_lazy()))
            }
        }
    }
}

impl tower_service::Service<Request<Body>> for GrpcChannel {
    type Response = Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            GrpcChannel::Tonic(channel) => channel.poll_ready(cx).map_err(Into::into),
            GrpcChannel::H2(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self {
            GrpcChannel::Tonic(channel) => {
                let response = channel.call(request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
            GrpcChannel::H2(channel) => {
                let channel = channel.clone();
                Box::pin(async move { channel.send(request).await.map_err(Into::into) })
            }
        }
    }
}

/// Unary gRPC calls to one `http://` endpoint over one HTTP/2 connection (see the module docs).
#[derive(Clone)]
pub struct H2Channel {
    inner: Arc<Inner>,
}

struct Inner {
    authority: Authority,
    /// `host:port`, as connected to.
    addr: String,
    connect_timeout: Duration,
    /// The open connection, with a number that tells one connection from the next. Cleared by
    /// the connection's task when the connection ends.
    current: Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    /// Held while connecting, so that a burst of calls makes one connection, not one each.
    connecting: tokio::sync::Mutex<u64>,
    keepalive: Keepalive,
    /// The tasks driving this channel's connections (the current one, and any older one still
    /// finishing its calls): aborted when the channel is dropped.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// HTTP/2 keepalive of an [`H2Channel`]: a PING every `interval`; the connection is dropped when
/// no PONG comes back within `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: KEEPALIVE_INTERVAL,
            timeout: KEEPALIVE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for H2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Channel")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl H2Channel {
    /// A channel to `uri` (`http://host[:port]`), connecting on first use. `None` when the URI is
    /// not plain-text HTTP with a host.
    pub fn lazy(uri: &Uri, connect_timeout: Duration) -> Option<H2Channel> {
        H2Channel::lazy_with(uri, connect_timeout, Keepalive::default())
    }

    /// Like [`lazy`](H2Channel::lazy), with the given keepalive.
    pub fn lazy_with(
        uri: &Uri,
        connect_timeout: Duration,
        keepalive: Keepalive,
    ) -> Option<H2Channel> {
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?.clone();
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        let addr = match authority.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => format!("{host}:80"),
        };
        // `host()` keeps an IPv6 literal's brackets, which is the form `host:port` parsing wants.
        Some(H2Channel {
            inner: Arc::new(Inner {
                authority,
                addr,
                connect_timeout,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(0),
                keepalive,
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Connects now, so that an unreachable endpoint is reported at once.
    pub async fn connect(&self) -> Result<(), Status> {
        self.sender().await.map(drop)
    }

    /// The open connection's sender, connecting first when there is none.
    async fn sender(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), Status> {
        if let Some(open) = lock(&self.inner.current).clone() {
            return Ok(open);
        }
        let mut generation = self.inner.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(open) = lock(&self.inner.current).clone() {
            return Ok(open);
        }
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Status::unavailable(format!("{what} {}: {e}", self.inner.addr))
        };
        let stream = tokio::time::timeout(
            self.inner.connect_timeout,
            TcpStream::connect(&self.inner.addr),
        )
        .await
        .map_err(|e| unavailable("connecting to", &e))?
        .map_err(|e| unavailable("connecting to", &e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unavailable("connecting to", &e))?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(crate::wire::Coalesced::new(stream))
            .await
            .map_err(|e| unavailable("HTTP/2 handshake with", &e))?;
        *generation += 1;
        let id = *generation;
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let pings = connection.ping_pong();
        let keepalive = self.inner.keepalive;
        let task = tokio::spawn(async move {
            let ended = tokio::select! {
                ended = &mut connection => ended.err().map(|e| e.to_string()),
                dead = keep_alive(pings, keepalive) => Some(dead),
            };
            if let Some(e) = ended {
                tracing::debug!(error = %e, "participant connection ended");
            }
            if let Some(inner) = inner.upgrade() {
                forget(&inner, id);
            }
            // Dropping the connection here closes the socket and fails its calls in flight.
        });
        {
            let mut tasks = lock(&self.inner.tasks);
            tasks.retain(|task| !task.is_finished());
            tasks.push(task);
        }
        *lock(&self.inner.current) = Some((id, sender.clone()));
        Ok((id, sender))
    }

    /// Sends one unary request and returns the response, whose body streams from the connection.
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, Status> {
        let (mut head, body) = request.into_parts();
        // A unary request's body is one encoded message, ready at once.
        let data = body
            .collect()
            .await
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))?
            .to_bytes();
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.inner.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("request URI: {e}")))?;
        head.version = ::http::Version::HTTP_2;
        let head = Request::from_parts(head, ());

        // A sender whose connection has just ended fails before anything is sent: forget that
        // connection and try once more on a new one.
        let (id, sender) = self.sender().await?;
        let mut sender = match sender.ready().await {
            Ok(ready) => ready,
            Err(_) => {
                forget(&self.inner, id);
                let (_, sender) = self.sender().await?;
                sender.ready().await.map_err(status)?
            }
        };
        let (response, mut stream) = sender.send_request(head, data.is_empty()).map_err(status)?;
        let sent = match data.is_empty() {
            true => Ok(()),
            false => stream.send_data(data, true),
        };
        // A server may answer and close the stream before it has read the request, as a gRPC
        // server does with a call it refuses outright (no token: `UNAUTHENTICATED`). Sending the
        // body then fails ("inactive stream"), but the answer is the call's outcome: read it,
        // and report the failed send only when there is no answer.
        let response = match (response.await, sent) {
            (Ok(response), _) => response,
            (Err(e), Ok(())) => return Err(status(e)),
            (Err(_), Err(send)) => return Err(status(send)),
        };
        let (head, recv) = response.into_parts();
        Ok(Response::from_parts(
            head,
            Body::new(ResponseBody {
                _channel: self.inner.clone(),
                recv,
                data_done: false,
                done: false,
            }),
        ))
    }
}

/// PINGs the peer every `keepalive.interval`; returns why the connection is to be dropped (a PING
/// unanswered within `keepalive.timeout`, or failed). Never returns without PINGs to send.
async fn keep_alive(pings: Option<h2::PingPong>, keepalive: Keepalive) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => return format!("no PONG within {:?}", keepalive.timeout),
        }
    }
}

/// Drops the cached sender of connection `id`, if it is still the current one.
fn forget(inner: &Inner, id: u64) {
    let mut current = lock(&inner.current);
    if current.as_ref().is_some_and(|(open, _)| *open == id) {
        *current = None;
    }
}

/// The status a transport error becomes: the connection being gone, or the peer refusing the
/// stream before acting on it, is `UNAVAILABLE`; otherwise tonic's mapping of HTTP/2 errors.
fn status(e: h2::Error) -> Status {
    if e.is_io() || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Status::unavailable(format!("participant connection: {e}"))
    } else {
        Status::from_error(Box::new(e))
    }
}

/// A response body read from the HTTP/2 stream: data frames, then the trailers that carry the
/// gRPC status.
struct ResponseBody {
    /// Keeps the connection's task running while the body is read.
    _channel: Arc<Inner>,
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read, so the peer may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn fast(interval_ms: u64, timeout_ms: u64) -> Keepalive {
        Keepalive {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    async fn channel_to(listener: &TcpListener, keepalive: Keepalive) -> H2Channel {
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        H2Channel::lazy_with(&uri, Duration::from_secs(5), keepalive).unwrap()
    }

    fn tasks(channel: &H2Channel) -> Vec<tokio::task::AbortHandle> {
        lock(&channel.inner.tasks)
            .iter()
            .map(|t| t.abort_handle())
            .collect()
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 2s: {what}");
    }

    /// A peer that accepts and reads everything but never writes a byte (no SETTINGS, no PONG):
    /// a host that vanished with the connection open looks like this.
    async fn silent_peer(listener: TcpListener) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        std::future::pending::<()>().await;
    }

    #[tokio::test]
    async fn a_silent_peer_is_dropped_and_its_calls_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let channel = channel_to(&listener, fast(50, 100)).await;
        tokio::spawn(silent_peer(listener));
        channel.connect().await.unwrap();
        let request = Request::builder()
            .uri("/baton.v1.Participant/Invoke")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let call = tokio::time::timeout(Duration::from_secs(2), channel.send(request))
            .await
            .expect("the call must fail once the PING goes unanswered, not hang");
        assert_eq!(call.unwrap_err().code(), tonic::Code::Unavailable);
        let task = tasks(&channel);
        eventually("the connection is forgotten and its task ended", || {
            lock(&channel.inner.current).is_none() && task.iter().all(|t| t.is_finished())
        })
        .await;
    }

    #[tokio::test]
    async fn a_peer_that_answers_pings_keeps_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let channel = channel_to(&listener, fast(20, 500)).await;
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            // Polling the connection answers PINGs.
            while let Some(Ok(_)) = connection.accept().await {}
        });
        channel.connect().await.unwrap();
        let first = lock(&channel.inner.current).as_ref().map(|(id, _)| *id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = lock(&channel.inner.current).as_ref().map(|(id, _)| *id);
        assert_eq!(first, Some(1));
        assert_eq!(later, first, "PINGs answered: the connection stays");
        assert!(tasks(&channel).iter().all(|t| !t.is_finished()));
    }

    #[tokio::test]
    async fn dropping_the_channel_ends_its_connection_task() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let channel = channel_to(&listener, Keepalive::default()).await;
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            // Until EOF: the connection was closed.
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        channel.connect().await.unwrap();
        let task = tasks(&channel);
        assert_eq!(task.len(), 1);
        // A sender outliving the channel would keep an unowned connection task running.
        let (_, sender) = lock(&channel.inner.current).clone().unwrap();
        let clone = channel.clone();
        drop(channel);
        tokio::task::yield_now().await;
        assert!(!task[0].is_finished(), "a clone still holds the channel");
        drop(clone);
        eventually("the task ends with the last clone", || {
            task[0].is_finished()
        })
        .await;
        tokio::time::timeout(Duration::from_secs(2), peer)
            .await
            .expect("the peer sees the socket close")
            .unwrap();
        drop(sender);
    }
}
