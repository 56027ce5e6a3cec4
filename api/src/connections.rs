//! The listener's connections: how many are open, when a client has gone, and the deadlines
//! that keep a bot from holding one forever.
//!
//! Every accepted connection is wrapped ([`TrackingAcceptor`], [`TrackedIo`]) and registered in
//! [`Connections`] by its peer address (unique among open connections), where the middleware
//! finds it for each request that arrives on it.
//!
//! **Gone clients.** poem drives a request to its end even after its HTTP/1 client has closed
//! the connection (it keeps polling the connection after hyper reports the end of the stream), so
//! a hold request whose client timed out would still take stock. Each connection's stream raises
//! a flag when a read reaches its end (the client closed its side) or fails; handlers get it with
//! [`client_gone`].
//!
//! **Deadlines.** poem gives hyper no timer, so hyper's own header timeout never fires, and
//! poem's idle timeout only notices a connection with no I/O at all (a client trickling a byte
//! at a time stays forever). The connection's stream keeps the deadlines itself:
//! - bytes of a request that has not arrived yet (its head, and its body: the middleware reads
//!   bodies up front) start `HTTP_HEADER_TIMEOUT_SECONDS`; more bytes do not extend it, only the
//!   request's arrival at the middleware ([`Connections::arrived`]) ends it;
//! - while requests are in flight (an event stream is one until its body ends) there is no
//!   deadline;
//! - otherwise the connection is idle, and is closed `HTTP_IDLE_TIMEOUT_SECONDS` after its last
//!   read or write.
//!
//! A read (or a write that has to wait) that finds its deadline passed fails with `TimedOut`,
//! and hyper drops the connection.
//! The timer is re-armed lazily: it fires at the deadline known when it was set, or sooner, and a
//! fire that finds the deadline moved just sets it again. Nothing per request touches it.
//!
//! **Capacity.** Beyond `HTTP_MAX_CONNECTIONS` open connections a new one is closed as soon as
//! it is accepted; those already open are served as before.

use std::{
    collections::HashMap,
    future::Future,
    io::{self, Result as IoResult},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use metrics::{Counter, Gauge};
use poem::{
    Body, Request, Response,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// How long the acceptor waits after its first failed accept, doubling up to the second.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// The listener's limits (see the module's doc).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The open connections, by peer address.
pub struct Connections {
    open: Mutex<HashMap<Peer, Arc<Conn>>>,
    count: AtomicUsize,
    limits: Limits,
    metrics: ConnMetrics,
}

/// Handles made once: naming a metric looks it up in the recorder's registry.
struct ConnMetrics {
    open: Gauge,
    header_timeout: Counter,
    idle_timeout: Counter,
    over_capacity: Counter,
}

impl ConnMetrics {
    fn new() -> Self {
        metrics::describe_gauge!("http_connections_open", "Open client connections");
        metrics::describe_counter!(
            "http_connections_closed_total",
            "Client connections closed by the server: `header_timeout` (a request did not arrive \
             in time), `idle_timeout`, `over_capacity` (refused at HTTP_MAX_CONNECTIONS)"
        );
        let closed = |reason: &'static str| {
            let labels = [("reason", reason)];
            metrics::counter!("http_connections_closed_total", &labels)
        };
        Self {
            open: metrics::gauge!("http_connections_open"),
            header_timeout: closed("header_timeout"),
            idle_timeout: closed("idle_timeout"),
            over_capacity: closed("over_capacity"),
        }
    }
}

/// What a connection's stream and the requests on it share.
struct Conn {
    /// Raised when the client has closed its side (see the module's doc).
    gone: Arc<AtomicBool>,
    /// Requests that have arrived and whose answers are not sent yet.
    in_flight: AtomicU32,
    /// Requests that have arrived, ever (wrapping): a change ends a header deadline.
    arrived: AtomicU32,
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

/// The connection's "client has gone" flag, as a request carries it.
#[derive(Clone)]
struct ClientGone(Arc<AtomicBool>);

/// The "client has gone" flag of the connection `req` came on (`None` when it did not come
/// through a tracked listener, as in in-process tests).
pub fn client_gone(req: &Request) -> Option<Arc<AtomicBool>> {
    req.data::<ClientGone>().map(|g| g.0.clone())
}

impl Connections {
    pub fn new(limits: Limits) -> Self {
        Self {
            open: Mutex::default(),
            count: AtomicUsize::new(0),
            limits,
            metrics: ConnMetrics::new(),
        }
    }

    /// Marks `req` as arrived on its connection, whole (its body read): this ends the
    /// connection's header deadline, and the request is in flight until the returned guard is
    /// dropped (see [`InFlight::until_sent`]). Also gives the request its connection's
    /// [`client_gone`] flag. `None` when it did not come through a tracked listener.
    pub fn arrived(&self, req: &mut Request) -> Option<InFlight> {
        let conn = {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(&Peer::of(req.remote_addr()))?.clone()
        };
        req.set_data(ClientGone(conn.gone.clone()));
        Some(conn.arrive())
    }

    /// Registers a connection just accepted from `key` and wraps its stream.
    fn track<T>(self: &Arc<Self>, io: T, key: Peer) -> TrackedIo<T> {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.metrics.open.increment(1.0);
        let conn = Arc::new(Conn {
            gone: Arc::new(AtomicBool::new(false)),
            in_flight: AtomicU32::new(0),
            arrived: AtomicU32::new(0),
        });
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), conn.clone());
        let now = Instant::now();
        let first_look = self.limits.header_timeout.min(self.limits.idle_timeout);
        TrackedIo {
            inner: io,
            conn,
            key,
            connections: self.clone(),
            timer: Box::pin(tokio::time::sleep_until(now + first_look)),
            last_io: now,
            reading: None,
            timed_out: None,
        }
    }
}

impl Conn {
    /// A request has arrived whole on this connection.
    fn arrive(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.arrived.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }
}

/// A request in flight on its connection (see [`Connections::arrived`]).
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// Keeps the request in flight while `resp`'s body is sent when that body has no known
    /// length (an event stream, open for as long as the client listens); any other answer is
    /// sent at once, and the request ends here.
    pub fn until_sent(self, mut resp: Response) -> Response {
        let body = BoxBody::from(resp.take_body());
        if body.size_hint().exact().is_some() {
            resp.set_body(Body::from(body));
        } else {
            resp.set_body(Body::from(BoxBody::new(HeldBody {
                body,
                _in_flight: self,
            })));
        }
        resp
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct HeldBody {
    body: BoxBody<Bytes, io::Error>,
    _in_flight: InFlight,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An acceptor whose connections are tracked in [`Connections`] and kept to its limits.
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
        let connections = &self.connections;
        let mut backoff = Duration::ZERO;
        loop {
            let (io, local, remote, scheme) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                // Most likely out of file descriptors: the connection stays queued, and poem
                // would ask again at once, spinning a core. Wait a little, longer each time.
                Err(error) => {
                    if backoff.is_zero() {
                        tracing::warn!(%error, "accepting a connection failed; retrying");
                    }
                    backoff = (backoff * 2).clamp(ACCEPT_RETRY_FIRST, ACCEPT_RETRY_MAX);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            // Only this loop adds to the count, so it cannot pass the limit between the two.
            if connections.count.load(Ordering::Acquire) >= connections.limits.max_connections {
                // Closed at once, not queued: the next connection is accepted without delay,
                // and the open ones keep being served.
                drop(io);
                connections.metrics.over_capacity.increment(1);
                continue;
            }
            let io = connections.track(io, Peer::of(&remote));
            return Ok((io, local, remote, scheme));
        }
    }
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// A request did not arrive within `HTTP_HEADER_TIMEOUT_SECONDS` of its first bytes.
    Header,
    /// No request in flight and no I/O for `HTTP_IDLE_TIMEOUT_SECONDS`.
    Idle,
}

impl Expired {
    fn error(self) -> io::Error {
        let what = match self {
            Self::Header => "the request did not arrive within HTTP_HEADER_TIMEOUT_SECONDS",
            Self::Idle => "the connection was idle for HTTP_IDLE_TIMEOUT_SECONDS",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }
}

/// A connection's stream: it raises the gone flag at the end of its input and keeps the
/// connection's deadlines (see the module's doc).
pub struct TrackedIo<T> {
    inner: T,
    conn: Arc<Conn>,
    key: Peer,
    connections: Arc<Connections>,
    /// Wakes the connection's task by its deadline, or sooner.
    timer: Pin<Box<Sleep>>,
    /// The last read or write that moved bytes.
    last_io: Instant,
    /// When the first bytes of a request that has not arrived yet were read, and the count of
    /// arrived requests then.
    reading: Option<(Instant, u32)>,
    timed_out: Option<Expired>,
}

impl<T> TrackedIo<T> {
    /// Forgets a header deadline whose request has arrived.
    fn settle(&mut self) {
        let arrived = self.conn.arrived.load(Ordering::Acquire);
        if self.reading.is_some_and(|(_, at)| at != arrived) {
            self.reading = None;
        }
    }

    /// Bytes were read at `now`: they may start a request's header deadline.
    fn on_read(&mut self, now: Instant) {
        self.last_io = now;
        self.settle();
        if self.reading.is_none() && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            self.reading = Some((now, self.conn.arrived.load(Ordering::Acquire)));
        }
    }

    /// The deadline the connection is under now, if any.
    fn deadline(&mut self) -> Option<(Instant, Expired)> {
        self.settle();
        if self.conn.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let limits = &self.connections.limits;
        Some(match self.reading {
            Some((since, _)) => (since + limits.header_timeout, Expired::Header),
            None => (self.last_io + limits.idle_timeout, Expired::Idle),
        })
    }

    /// The error that closes the connection, once its deadline has passed.
    fn passed(&mut self, now: Instant) -> Option<io::Error> {
        let (at, why) = self.deadline()?;
        (at <= now).then(|| self.expire(why))
    }

    fn expire(&mut self, why: Expired) -> io::Error {
        if self.timed_out.is_none() {
            self.timed_out = Some(why);
            let metrics = &self.connections.metrics;
            match why {
                Expired::Header => metrics.header_timeout.increment(1),
                Expired::Idle => metrics.idle_timeout.increment(1),
            }
        }
        why.error()
    }

    /// Called when the stream has to wait: arms the timer to wake the task by the deadline
    /// (with no deadline, after a header timeout, to look again: requests in flight may have
    /// ended meanwhile without waking this task), or fails once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let now = Instant::now();
            let due = self.deadline();
            if let Some((at, why)) = due
                && at <= now
            {
                return Poll::Ready(self.expire(why));
            }
            let look_again = now + self.connections.limits.header_timeout;
            let wake = due.map_or(look_again, |(at, _)| at.min(look_again));
            // A timer due sooner is left alone: when it fires this looks again.
            if self.timer.is_elapsed() || self.timer.deadline() > wake {
                self.timer.as_mut().reset(wake);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<IoResult<()>> {
        let this = &mut *self;
        if let Some(why) = this.timed_out {
            return Poll::Ready(Err(why.error()));
        }
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let now = Instant::now();
                this.on_read(now);
                // A client that keeps a byte coming never makes this read wait: look here too.
                match this.passed(now) {
                    Some(err) => Poll::Ready(Err(err)),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Ok(())) => {
                if had_room {
                    this.conn.gone.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.conn.gone.store(true, Ordering::Relaxed);
                Poll::Ready(Err(e))
            }
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T> TrackedIo<T> {
    /// After a write: bytes written are activity; a write that has to wait is under the
    /// deadline too (a client that stops reading).
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<IoResult<usize>>,
    ) -> Poll<IoResult<usize>> {
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.last_io = Instant::now();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<IoResult<usize>> {
        let this = &mut *self;
        if let Some(why) = this.timed_out {
            return Poll::Ready(Err(why.error()));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written)
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
        let this = &mut *self;
        if let Some(why) = this.timed_out {
            return Poll::Ready(Err(why.error()));
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T> Drop for TrackedIo<T> {
    fn drop(&mut self) {
        self.conn.gone.store(true, Ordering::Relaxed);
        let connections = &self.connections;
        {
            let mut open = connections.open.lock().unwrap_or_else(|p| p.into_inner());
            // The address may already name a newer connection: remove only our own entry.
            if open
                .get(&self.key)
                .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
            {
                open.remove(&self.key);
            }
        }
        connections.count.fetch_sub(1, Ordering::AcqRel);
        connections.metrics.open.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The server's side of a connection with these timeouts, and the client's.
    fn tracked(header: u64, idle: u64) -> (DuplexStream, TrackedIo<DuplexStream>) {
        let connections = Arc::new(Connections::new(Limits {
            header_timeout: ms(header),
            idle_timeout: ms(idle),
            max_connections: 10,
        }));
        let (client, server) = tokio::io::duplex(4096);
        (
            client,
            connections.track(server, Peer::Other("test".into())),
        )
    }

    /// Reads until the stream fails; the error, and how long that took.
    async fn until_failed(io: &mut TrackedIo<DuplexStream>) -> (io::ErrorKind, Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("the client's side ended"),
                Ok(_) => {}
                Err(e) => return (e.kind(), started.elapsed()),
            }
        }
    }

    #[tokio::test]
    async fn a_request_trickled_in_is_cut_at_the_header_timeout() {
        let (mut client, mut io) = tracked(300, 10_000);
        let trickle = tokio::spawn(async move {
            while client.write_all(b"x").await.is_ok() {
                tokio::time::sleep(ms(50)).await;
            }
        });
        let (kind, after) = until_failed(&mut io).await;
        trickle.abort();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(after >= ms(300) && after < ms(600), "{after:?}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_the_idle_timeout() {
        // Timed from before the connection is tracked: its idle time starts there.
        let started = Instant::now();
        let (_client, mut io) = tracked(10_000, 300);
        let (kind, _) = until_failed(&mut io).await;
        let after = started.elapsed();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(after >= ms(300) && after < ms(600), "{after:?}");
    }

    #[tokio::test]
    async fn no_deadline_while_a_request_is_in_flight_and_idle_after() {
        let (mut client, mut io) = tracked(200, 200);
        client.write_all(b"GET").await.expect("write");
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.expect("read"), 3);
        let in_flight = io.conn.clone().arrive();
        // Several times both timeouts: the read just waits.
        let waited = tokio::time::timeout(ms(700), io.read(&mut buf)).await;
        assert!(waited.is_err(), "{waited:?}");
        drop(in_flight);
        // Idle since the last read, long ago: closed at the next look.
        let (kind, after) = until_failed(&mut io).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(after < ms(500), "{after:?}");
    }

    #[tokio::test]
    async fn each_request_has_a_header_timeout_of_its_own() {
        let (mut client, mut io) = tracked(300, 10_000);
        let requests = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(ms(100)).await;
                client.write_all(b"x").await.expect("write");
            }
            client
        });
        // A second of requests, each arriving 100 ms after the last was answered.
        let mut buf = [0u8; 8];
        for _ in 0..10 {
            assert_eq!(io.read(&mut buf).await.expect("served"), 1);
            drop(io.conn.clone().arrive());
        }
        let _client = requests.await.expect("client");
    }
}
