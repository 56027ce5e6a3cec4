//! Live stock for `GET /api/products/{id}/stream` (Server-Sent Events).
//!
//! One [`StockHub`] per API process. Each product that has at least one listener gets one task
//! that reads its stock every `STOCK_STREAM_INTERVAL_MS` through `entity::operations::products::product_view`
//! and publishes the result on a `watch` channel: one query per product per interval, however
//! many listeners. Listeners forward a value only when it differs from the last one they sent.
//! The task ends at the first tick that finds no listener, and every stream ends when the hub
//! is closed (on SIGTERM), so graceful shutdown never waits on open streams.
//!
//! Each client may hold `STREAM_MAX_PER_CLIENT` streams open ([`ClientStreams`]), so that one
//! client cannot take the process's `STOCK_STREAM_MAX_CLIENTS` places.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use entity::{Db, operations::products::ProductView, types::ProductId};
use futures_util::{Stream, stream};
use tokio::{sync::watch, time::MissedTickBehavior};

use crate::client_addr::ClientKey;

/// A check slower than this is abandoned (and counted as failed); the next tick tries again.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle listener looks whether its client has gone. hyper keeps writing a
/// streamed body after the client has closed its side, and only a write that fails ends it:
/// without this, a departed client's place would be held until two keep-alives had been sent.
pub(crate) const GONE_CHECK: Duration = Duration::from_secs(1);

/// A product's numbers as one check read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub id: ProductId,
    pub stock: i32,
    pub available_stock: i32,
}

impl From<&ProductView> for Level {
    fn from(p: &ProductView) -> Self {
        Self {
            id: p.id,
            stock: p.stock,
            available_stock: p.available_stock,
        }
    }
}

/// What a product's task publishes: the level and when the read that found it started.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    level: Level,
    read_started: Instant,
}

/// One streamed product: its channel, and whether a listener joined since the last check
/// (then the next check publishes even an unchanged level, so that listener can catch up).
struct Product {
    tx: watch::Sender<Option<Snapshot>>,
    joined: AtomicBool,
}

struct Inner {
    db: Db,
    interval: Duration,
    max_clients: usize,
    clients: AtomicUsize,
    products: Mutex<HashMap<ProductId, Arc<Product>>>,
    closed: watch::Sender<bool>,
}

/// The per-process hub of stock streams (see the module's doc).
#[derive(Clone)]
pub struct StockHub {
    inner: Arc<Inner>,
}

/// A listener's place under `STOCK_STREAM_MAX_CLIENTS`, given back when its stream is dropped.
pub struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.clients.fetch_sub(1, Ordering::AcqRel);
        // Moved by one, never set: listeners leaving at once on several threads would set
        // their counts in any order, and the gauge could stay at a count already gone (seen:
        // 21 open streams shown after all 301 had closed).
        metrics::gauge!("stock_stream_clients").decrement(1.0);
    }
}

impl StockHub {
    pub fn new(db: Db, interval: Duration, max_clients: usize) -> Self {
        describe_metrics();
        let (closed, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                db,
                interval,
                max_clients,
                clients: AtomicUsize::new(0),
                products: Mutex::default(),
                closed,
            }),
        }
    }

    /// A place for one more listener, or `None` when `STOCK_STREAM_MAX_CLIENTS` are open.
    pub fn reserve(&self) -> Option<Slot> {
        let inner = &self.inner;
        let taken = inner
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_clients).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                metrics::gauge!("stock_stream_clients").increment(1.0);
                Some(Slot {
                    inner: inner.clone(),
                })
            }
            Err(_) => {
                metrics::counter!("stock_stream_rejected_total").increment(1);
                None
            }
        }
    }

    /// Ends every open stream and the product tasks; streams opened later end after their first
    /// event. Called when the server stops accepting connections.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// The levels a listener is sent: `first` (a read that completed just now) at once, then
    /// each level a later check finds that differs from the last one sent.
    /// `client_gone` is the connection's flag (see [`crate::connections`]): the stream ends
    /// within [`GONE_CHECK`] of it rising.
    pub fn follow(
        &self,
        slot: Slot,
        first: Level,
        client_gone: Option<Arc<AtomicBool>>,
    ) -> impl Stream<Item = Level> + Send + 'static {
        // Only checks that start after this moment are newer than `first` for certain.
        let since = Instant::now();
        let rx = self.subscribe(first.id);
        let closed = self.inner.closed.subscribe();
        let state = Follower {
            first: Some(first),
            last: first,
            since,
            rx,
            closed,
            client_gone,
            _slot: slot,
        };
        stream::unfold(state, Follower::next)
    }

    /// The product's channel, starting its task if it has none.
    fn subscribe(&self, id: ProductId) -> watch::Receiver<Option<Snapshot>> {
        let mut products = self
            .inner
            .products
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The task removes its entry under this same lock when it sees no receiver, so an
        // entry found here is still served.
        let product = products
            .entry(id)
            .or_insert_with(|| {
                let (tx, _) = watch::channel(None);
                let product = Arc::new(Product {
                    tx,
                    joined: AtomicBool::new(false),
                });
                tokio::spawn(run(self.inner.clone(), id, product.clone()));
                product
            })
            .clone();
        metrics::gauge!("stock_stream_products").set(products.len() as f64);
        let mut rx = product.tx.subscribe();
        rx.borrow_and_update();
        product.joined.store(true, Ordering::SeqCst);
        rx
    }
}

/// One product's checks, until it has no listener or the hub closes.
async fn run(inner: Arc<Inner>, id: ProductId, product: Arc<Product>) {
    let mut closed = inner.closed.subscribe();
    let mut ticks = tokio::time::interval(inner.interval);
    // A slow check delays the next one instead of bunching the missed ones after it.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Waits one interval first: the listener that started this task has just read the product.
    ticks.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = closed.wait_for(|c| *c) => break,
        }
        {
            let mut products = inner.products.lock().unwrap_or_else(|p| p.into_inner());
            if product.tx.receiver_count() == 0 {
                products.remove(&id);
                metrics::gauge!("stock_stream_products").set(products.len() as f64);
                return;
            }
        }
        // Taken before the read starts: a listener whose flag this takes joined before the
        // read, so the level it is sent is newer than its first.
        let joined = product.joined.swap(false, Ordering::SeqCst);
        let read_started = Instant::now();
        metrics::counter!("stock_stream_checks_total").increment(1);
        let read = tokio::time::timeout(
            CHECK_TIMEOUT,
            entity::operations::products::product_view(&inner.db, id),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match read {
            Ok(view) => {
                if failing {
                    tracing::info!(product_id = id.get(), "stock stream checks succeed again");
                    failing = false;
                }
                let level = Level::from(&view);
                product.tx.send_if_modified(|current| {
                    let changed = current.is_none_or(|c| c.level != level);
                    *current = Some(Snapshot {
                        level,
                        read_started,
                    });
                    changed || joined
                });
            }
            Err(error) => {
                metrics::counter!("stock_stream_check_failures_total").increment(1);
                if !failing {
                    tracing::warn!(product_id = id.get(), %error, "stock stream check failed; retrying every interval");
                    failing = true;
                }
                // The listeners that joined are still owed a check.
                if joined {
                    product.joined.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    // Closed: dropping the channel's last sender ends the followers' waits too.
    inner
        .products
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

/// Waits for the next value on `rx`: false once the hub closes, the client goes away (looked
/// at every [`GONE_CHECK`]), or the sender is gone (its task ended with the hub). Shared by the
/// stock and ticket streams.
pub(crate) async fn next_change<T>(
    rx: &mut watch::Receiver<T>,
    closed: &mut watch::Receiver<bool>,
    client_gone: Option<&Arc<AtomicBool>>,
) -> bool {
    let gone = async {
        match client_gone {
            Some(flag) => {
                while !flag.load(Ordering::Relaxed) {
                    tokio::time::sleep(GONE_CHECK).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = closed.wait_for(|c| *c) => false,
        () = gone => false,
        changed = rx.changed() => changed.is_ok(),
    }
}

/// One listener's stream.
struct Follower {
    first: Option<Level>,
    last: Level,
    since: Instant,
    rx: watch::Receiver<Option<Snapshot>>,
    closed: watch::Receiver<bool>,
    client_gone: Option<Arc<AtomicBool>>,
    _slot: Slot,
}

impl Follower {
    async fn next(mut self) -> Option<(Level, Self)> {
        if let Some(first) = self.first.take() {
            return Some((first, self));
        }
        loop {
            let (rx, closed) = (&mut self.rx, &mut self.closed);
            if !next_change(rx, closed, self.client_gone.as_ref()).await {
                return None;
            }
            let snapshot = *self.rx.borrow_and_update();
            if let Some(s) = snapshot
                && s.read_started > self.since
                && s.level != self.last
            {
                self.last = s.level;
                return Some((s.level, self));
            }
        }
    }
}

/// Open event streams per client (see the module's doc).
pub struct ClientStreams {
    max: u32,
    open: Mutex<HashMap<ClientKey, u32>>,
}

/// A client's place under `STREAM_MAX_PER_CLIENT`, given back when it is dropped.
pub struct ClientSlot {
    streams: Arc<ClientStreams>,
    key: ClientKey,
}

impl ClientStreams {
    pub fn new(max_per_client: u32) -> Arc<Self> {
        metrics::describe_counter!(
            "stream_client_limited_total",
            "Event streams refused because their client had STREAM_MAX_PER_CLIENT open"
        );
        Arc::new(Self {
            max: max_per_client,
            open: Mutex::default(),
        })
    }

    /// A place for one more stream of `key`'s, or `None` when it has as many as it may.
    pub fn reserve(self: &Arc<Self>, key: ClientKey) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            metrics::counter!("stream_client_limited_total").increment(1);
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            streams: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        // A client with no stream left is forgotten, so the table holds open streams only.
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "stock_stream_checks_total",
        "Stock reads made by the stream hub (one per streamed product per interval)"
    );
    describe_counter!(
        "stock_stream_check_failures_total",
        "Stock stream reads that failed or timed out"
    );
    describe_counter!(
        "stock_stream_rejected_total",
        "Stock streams refused because STOCK_STREAM_MAX_CLIENTS were open"
    );
    describe_gauge!("stock_stream_clients", "Open stock streams");
    describe_gauge!("stock_stream_products", "Products with open stock streams");
}
