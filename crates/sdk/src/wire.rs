//! A plain-text connection whose small writes leave together: [`Coalesced`].
//!
//! The `h2` crate copies a DATA frame's payload into its write buffer only when the payload is
//! small: up to 256 bytes on a socket that takes vectored writes (as a TCP stream does), up to
//! 1 kB on one that does not. A larger payload stays apart and must be written out before `h2`
//! buffers the next frame, so a gRPC answer of 300 bytes left as two system calls (its headers
//! and message, then its trailers, each a loopback send that wakes the peer), and calls sharing a
//! connection each flushed alone. [`Coalesced`] tells `h2` it takes no vectored writes, so
//! payloads up to 1 kB are copied and frames batch as they queue, and it keeps what `h2` writes
//! until `h2` flushes, so a larger payload still leaves in one vectored write with the frames
//! before it. Tokio's `BufWriter` under a flag that hides vectored writes would hold writes too,
//! but it allocates its whole buffer per connection up front and writes a payload larger than
//! its buffer in a second system call after the bytes it held.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;

/// Bytes held before a write goes straight through: the size of `h2`'s own write buffer.
const HOLD_LIMIT: usize = 16 * 1024;

/// A connection that holds what is written to it until it is flushed (or 16 kB are held), then
/// writes it in as few system calls as the socket allows. Reads pass through.
///
/// Every byte a `poll_write` accepted is on the socket once `poll_flush` returns `Ready(Ok)`, so
/// a writer that flushes when it wants its bytes sent (as `h2` does after each round of frames)
/// sees no difference but the count of system calls.
#[derive(Debug)]
pub struct Coalesced<T> {
    io: T,
    held: Vec<u8>,
}

/// A gRPC server's plain-text connections from `listener`, with `TCP_NODELAY` (a small answer
/// must not wait for the client's delayed ACK) and their writes [`Coalesced`].
///
/// An accept that fails for want of a resource (no file descriptor left, no memory for a
/// socket) pauses accepting for [`ACCEPT_PAUSE`] instead of trying again at once: tonic's own
/// listener yields the error, and its server asks for the next connection straight away, so a
/// coordinator out of file descriptors spun a core on failing accepts for as long as the
/// condition lasted. The first failure of a run is logged as a warning, the return to accepting
/// at info.
pub fn incoming(listener: TcpListener) -> Incoming {
    Incoming {
        listener,
        pause: None,
        failing: false,
    }
}

/// How long accepting pauses after an accept failed for want of a resource.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The stream [`incoming`] returns.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    pause: Option<Pin<Box<Sleep>>>,
    /// The last accept failed for want of a resource (so its warning has been logged).
    failing: bool,
}

impl Stream for Incoming {
    type Item = io::Result<Coalesced<TcpStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                std::task::ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((tcp, _peer)) => {
                    if std::mem::take(&mut this.failing) {
                        tracing::info!("accepting connections again");
                    }
                    // Only fails if the socket is already gone; its first read will tell.
                    let _ = tcp.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Coalesced::new(tcp))));
                }
                // The peer gave up before the connection was accepted: nothing to wait for.
                Err(error) if peer_gone(&error) => continue,
                Err(error) => {
                    if !std::mem::replace(&mut this.failing, true) {
                        tracing::warn!(
                            %error,
                            pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                            "accepting a connection failed; trying again after a pause until it succeeds"
                        );
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                }
            }
        }
    }
}

/// An accept error about the one connection (its peer reset or aborted it while it waited), as
/// opposed to one about the listener or the process.
pub(crate) fn peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

impl<T> Coalesced<T> {
    /// Wraps `io`; nothing is allocated until the first write.
    pub fn new(io: T) -> Self {
        Coalesced {
            io,
            held: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes the held bytes out; `Ready(Ok)` once none are held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.held.len() + data.len() <= HOLD_LIMIT {
            me.held.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        // Too much to hold: the held bytes and this write leave together, and only the part of
        // `data` the socket took counts as written.
        loop {
            if me.held.is_empty() {
                return Pin::new(&mut me.io).poll_write(cx, data);
            }
            let slices = [IoSlice::new(&me.held), IoSlice::new(data)];
            let n = std::task::ready!(Pin::new(&mut me.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= me.held.len() {
                let taken = n - me.held.len();
                me.held.clear();
                if taken > 0 {
                    return Poll::Ready(Ok(taken));
                }
            } else {
                me.held.drain(..n);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_drain(cx))?;
        if me.held.capacity() > HOLD_LIMIT {
            me.held.shrink_to(HOLD_LIMIT);
        }
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }

    /// No: `h2` then copies payloads up to 1 kB into its buffer instead of writing each apart.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Writes of every size reach the peer whole and in order once flushed, and nothing leaves
    /// before the flush while less than the hold limit is held.
    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_after_a_flush() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut near = Coalesced::new(near);
        let mut sent = Vec::new();
        for (i, size) in [9, 300, 9, 5_000, 1, HOLD_LIMIT + 10, 7, 40_000, 3]
            .into_iter()
            .enumerate()
        {
            let chunk: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            near.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
        }
        near.flush().await.unwrap();
        let mut got = vec![0; sent.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);

        near.write_all(b"held").await.unwrap();
        let mut probe = [0u8; 4];
        // A timeout of zero polls the read once: the bytes would be there if they had been sent.
        let early =
            tokio::time::timeout(std::time::Duration::ZERO, far.read_exact(&mut probe)).await;
        assert!(early.is_err(), "a small write left before the flush");
        near.flush().await.unwrap();
        far.read_exact(&mut probe).await.unwrap();
        assert_eq!(&probe, b"held");
    }

    /// A peer that takes a few bytes at a time still gets every byte once, in order.
    #[tokio::test]
    async fn a_slow_peer_gets_every_byte_once() {
        let (near, mut far) = tokio::io::duplex(7);
        let mut near = Coalesced::new(near);
        let sent: Vec<u8> = (0..(HOLD_LIMIT * 2 + 5)).map(|j| (j % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        near.write_all(&sent[..100]).await.unwrap();
        near.write_all(&sent[100..]).await.unwrap();
        near.shutdown().await.unwrap();
        drop(near);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
