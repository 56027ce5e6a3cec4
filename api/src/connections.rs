//! Knowing when a client has gone.
//!
//! poem drives a request to its end even after its HTTP/1 client has closed the connection (it
//! keeps polling the connection after hyper reports the end of the stream), so a hold request
//! whose client timed out would still take stock. The listener is wrapped: each connection's
//! stream raises a flag when a read reaches its end (the client closed its side) or fails, and
//! handlers find their connection's flag by the peer's address, unique among open connections.

use std::{
    collections::HashMap,
    io::Result as IoResult,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use poem::{
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The open connections, by peer address, each with its "client has gone" flag.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<Peer, Arc<AtomicBool>>>,
}

/// A peer address as a map key. TCP peers (every request, under load) are keyed by their
/// socket address as it is, not by its text: formatting it showed in profiles of hold requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Peer {
    Socket(SocketAddr),
    /// A Unix socket or a custom transport, by its text.
    Other(String),
}

impl Peer {
    fn of(addr: &RemoteAddr) -> Self {
        match addr.as_socket_addr() {
            Some(socket) => Self::Socket(*socket),
            None => Self::Other(addr.to_string()),
        }
    }
}

impl Connections {
    /// The flag of the connection a request came on (`None` when it did not come through a
    /// tracked listener, as in in-process tests).
    pub fn gone_flag(&self, remote: &RemoteAddr) -> Option<Arc<AtomicBool>> {
        let peer = Peer::of(remote);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&peer).cloned()
    }
}

/// An acceptor whose connections report their client's departure to [`Connections`].
pub struct TrackingAcceptor<A> {
    inner: A,
    connections: Arc<Connections>,
}

impl<A> TrackingAcceptor<A> {
    pub fn new(inner: A, connections: Arc<Connections>) -> Self {
        Self { inner, connections }
    }
}

impl<A: Acceptor> Acceptor for TrackingAcceptor<A> {
    type Io = TrackedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let key = Peer::of(&remote);
        let gone = Arc::new(AtomicBool::new(false));
        self.connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), gone.clone());
        let io = TrackedIo {
            inner: io,
            gone,
            key,
            connections: self.connections.clone(),
        };
        Ok((io, local, remote, scheme))
    }
}

/// A connection's stream that raises its flag at the end of its input.
pub struct TrackedIo<T> {
    inner: T,
    gone: Arc<AtomicBool>,
    key: Peer,
    connections: Arc<Connections>,
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<IoResult<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if had_room && buf.filled().len() == before => {
                self.gone.store(true, Ordering::Relaxed);
            }
            Poll::Ready(Err(_)) => self.gone.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<IoResult<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoResult<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoResult<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<IoResult<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T> Drop for TrackedIo<T> {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::Relaxed);
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The address may already name a newer connection: remove only our own entry.
        if open
            .get(&self.key)
            .is_some_and(|g| Arc::ptr_eq(g, &self.gone))
        {
            open.remove(&self.key);
        }
    }
}
