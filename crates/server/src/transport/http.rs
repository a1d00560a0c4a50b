//! The client for HTTP/JSON participants (docs/HTTP.md, "Participants over HTTP"): pooled
//! HTTP/1.1 connections to one endpoint, plain or over rustls.
//!
//! hyper-util's pooling client keeps idle connections per endpoint and opens more under load, as
//! HTTP/1.1 runs one request per connection at a time. One [`HttpParticipant`] serves one
//! endpoint URL; the registry keeps it next to the endpoint's gRPC channels (and makes a new one
//! when the TLS files change), so load balancing and ejection see both kinds alike.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderMap, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// Largest reply body read from a participant: the gRPC client's default message limit, so
/// that neither door accepts more than the other.
pub const MAX_REPLY_BYTES: usize = 4 << 20;
/// Idle connections kept per endpoint; more are opened under load and closed when idle.
const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// An idle connection is closed after this long (participants' servers often close sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an HTTP participant call got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpCallError {
    /// No connection, or it broke before a complete answer: the call may have taken effect.
    #[error("{0}")]
    Connection(String),
    /// The reply body exceeded [`MAX_REPLY_BYTES`].
    #[error("reply body exceeds {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    /// The request could not be formed (a bug or a bad endpoint; never sent).
    #[error("request: {0}")]
    Request(String),
}

/// An HTTP answer: status, headers and the whole body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Pooled connections to one HTTP/JSON participant endpoint. Cheap to clone: clones share the
/// pool.
#[derive(Clone)]
pub struct HttpParticipant {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<Connector, Full<Bytes>>,
    /// `scheme://host:port` as given, with the base path (without a trailing `/`).
    origin: String,
    base: String,
}

impl std::fmt::Debug for HttpParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpParticipant")
            .field("origin", &self.inner.origin)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl HttpParticipant {
    /// A client for the endpoint `origin` (`http(s)://host:port`) with base path `base`
    /// (`""` or `/segments`). `tls` is required for `https://` (the caller checks that).
    /// Connects on first use.
    pub fn new(
        origin: String,
        base: String,
        tls: Option<Arc<ClientConfig>>,
        connect_timeout: Duration,
    ) -> HttpParticipant {
        let mut tcp = HttpConnector::new();
        // The scheme is checked by the endpoint parser; https is handled by `Connector`.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = Connector {
            tcp,
            tls: tls.map(TlsConnector::from),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpParticipant {
            inner: Arc::new(Inner {
                client,
                origin,
                base,
            }),
        }
    }

    /// The URL of `path` (which starts with `/`) under this endpoint's base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.inner.origin, self.inner.base, path)
    }

    /// `POST {base}{path}` with `headers` and the JSON `body`; reads the whole answer.
    ///
    /// The caller bounds the time; dropping the future drops the request (and its connection,
    /// which hyper does not return to the pool mid-request).
    pub async fn post(
        &self,
        path: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<HttpAnswer, HttpCallError> {
        let uri: Uri = self
            .url(path)
            .parse()
            .map_err(|e| HttpCallError::Request(format!("url: {e}")))?;
        let mut request = Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpCallError::Request(e.to_string()))?;
        request.headers_mut().extend(headers);
        let response = self
            .inner
            .client
            .request(request)
            .await
            .map_err(|e| HttpCallError::Connection(describe(&e)))?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpCallError::TooLarge
                } else {
                    HttpCallError::Connection(format!("reading the reply: {e}"))
                }
            })?
            .to_bytes();
        Ok(HttpAnswer {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// An error with its causes, which is where hyper-util puts the interesting part ("connection
/// refused", "tls handshake ...").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Opens TCP connections (through hyper-util's connector, for its timeouts and address
/// handling) and, for `https://`, runs the TLS handshake over them.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector,
    tls: Option<TlsConnector>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let stream = tcp.call(uri).await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Stream::Plain(stream)));
            }
            let tls = tls.ok_or("https endpoint without a participant CA")?;
            let name = ServerName::try_from(host)?;
            let stream = tls.connect(name, stream).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

/// A participant connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
