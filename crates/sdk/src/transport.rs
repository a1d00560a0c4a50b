//! The gRPC channel to one endpoint: tonic's `Channel`, for `http://` and `https://` alike, with
//! HTTP/2 keepalive.
//!
//! A hand-rolled channel over `h2` for `http://` endpoints (`H2Channel`, which skipped tonic's
//! buffer task and hyper's task per request) was removed on 2026-12-06: in alternating
//! `baton bench` rounds it did not buy the 10 % at W1 C=32 that would justify keeping a transport
//! of our own (docs/BENCHMARKS.md, "gRPC channel: h2 or tonic").
//!
//! Shared with the coordinator (`baton-server`), which calls participants through it; hidden from
//! the SDK's documentation because applications never use it directly.

use std::time::Duration;

use ::http::uri::Scheme;
use ::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// A channel to one gRPC endpoint. Cheap to clone; clones share the connection.
pub type GrpcChannel = Channel;

/// How often an HTTP/2 connection, idle or busy, is PINGed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the connection is dropped (its calls fail with
/// `UNAVAILABLE` and the next call connects again).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// `endpoint` with HTTP/2 keepalive: a PING every [`KEEPALIVE_INTERVAL`], also while idle, and
/// the connection dropped when no answer comes within [`KEEPALIVE_TIMEOUT`]. A peer that vanished
/// without a FIN or RST is noticed instead of hanging calls.
pub fn with_keepalive(endpoint: Endpoint) -> Endpoint {
    keepalive(endpoint, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
}

fn keepalive(endpoint: Endpoint, interval: Duration, timeout: Duration) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true)
}

/// A lazy channel to the plain-text endpoint `uri` (`http://host[:port]`): no connection until
/// the first call, and a new one after a connection breaks. `None` when the URI is not plain-text
/// HTTP with a host. Needs a Tokio runtime (the channel spawns its task here).
pub fn plaintext(uri: &Uri, connect_timeout: Duration) -> Option<GrpcChannel> {
    if uri.scheme() != Some(&Scheme::HTTP) || uri.host().is_none_or(str::is_empty) {
        return None;
    }
    let endpoint = Endpoint::from(uri.clone())
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    Some(with_keepalive(endpoint).connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_text_urls_with_a_host() {
        let timeout = Duration::from_secs(1);
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(plaintext(&uri("http://127.0.0.1:7600"), timeout).is_some());
        assert!(plaintext(&uri("https://127.0.0.1:7600"), timeout).is_none());
        assert!(plaintext(&uri("/path"), timeout).is_none());
    }

    /// A peer that accepts and reads but never writes a byte (no SETTINGS, no PONG), as a host
    /// that vanished with the connection open looks: the call fails once a PING goes unanswered.
    #[tokio::test]
    async fn a_silent_peer_fails_the_call_instead_of_hanging_it() {
        use tokio::io::AsyncReadExt;
        use tonic::codegen::Service;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let keepalive = keepalive(
            endpoint,
            Duration::from_millis(50),
            Duration::from_millis(100),
        );
        let mut channel = keepalive.connect_lazy();
        let request = ::http::Request::builder()
            .uri(format!("http://{addr}/baton.v1.Participant/Invoke"))
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::empty())
            .unwrap();
        let call = async {
            std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
            channel.call(request).await
        };
        let outcome = tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .expect("an unanswered PING must fail the call, not leave it hanging");
        assert!(outcome.is_err());
    }
}
