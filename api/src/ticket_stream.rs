//! Live tickets for `GET /api/queue/{id}/stream` (Server-Sent Events).
//!
//! One [`TicketHub`] per API process. Each product with at least one followed ticket gets one
//! task that reads all of that product's followed tickets every `QUEUE_STREAM_INTERVAL_MS`
//! with ONE statement (`entity::operations::queue::read_tickets`) and publishes them on a
//! `watch` channel: one query per queued product per interval, however many listeners. A
//! listener forwards its ticket only when its state or position changed. The task ends at the
//! first tick with nothing followed; every stream ends when the hub closes (on SIGTERM).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use entity::{
    Db,
    types::{ProductId, TicketId},
    views::TicketView,
};
use futures_util::{Stream, stream};
use tokio::{sync::watch, time::MissedTickBehavior};

/// A look slower than this is abandoned (and counted as failed); the next tick tries again.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The followed tickets of one product as the last look found them.
type Seen = Arc<HashMap<TicketId, TicketView>>;

/// One product whose tickets are followed: which, by how many listeners each, and the channel.
struct Product {
    followed: Mutex<HashMap<TicketId, usize>>,
    tx: watch::Sender<Seen>,
}

struct Inner {
    db: Db,
    interval: Duration,
    products: Mutex<HashMap<ProductId, Arc<Product>>>,
    closed: watch::Sender<bool>,
}

/// The per-process hub of ticket streams (see the module's doc).
#[derive(Clone)]
pub struct TicketHub {
    inner: Arc<Inner>,
}

/// A listener's interest in its ticket, given up when its stream is dropped.
struct Following {
    product: Arc<Product>,
    ticket: TicketId,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut followed = self
            .product
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = followed.get_mut(&self.ticket) {
            *n -= 1;
            if *n == 0 {
                followed.remove(&self.ticket);
            }
        }
        metrics::gauge!("queue_stream_clients").decrement(1.0);
    }
}

impl TicketHub {
    pub fn new(db: Db, interval: Duration) -> Self {
        metrics::describe_counter!(
            "queue_stream_checks_total",
            "Ticket reads made by the queue stream hub (one per streamed product per interval)"
        );
        metrics::describe_gauge!("queue_stream_clients", "Open ticket streams");
        let (closed, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                db,
                interval,
                products: Mutex::default(),
                closed,
            }),
        }
    }

    /// Ends every open stream and the product tasks.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// The ticket as a listener is sent it: `first` (read just now) at once, then each time a
    /// later look finds its state or position changed. Ends with the hub, or within
    /// [`crate::stream::GONE_CHECK`] of `client_gone` rising.
    pub fn follow(
        &self,
        first: TicketView,
        client_gone: Option<Arc<AtomicBool>>,
    ) -> impl Stream<Item = TicketView> + Send + 'static {
        let product = self.watch(first.product_id, first.id);
        let state = Listener {
            first: Some(first.clone()),
            rx: product.tx.subscribe(),
            closed: self.inner.closed.subscribe(),
            client_gone,
            _following: Following {
                product,
                ticket: first.id,
            },
            last: first,
        };
        stream::unfold(state, Listener::next)
    }

    /// The product's entry, with `ticket` followed once more; its task started if it had none.
    fn watch(&self, product_id: ProductId, ticket: TicketId) -> Arc<Product> {
        let mut products = self
            .inner
            .products
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let product = products
            .entry(product_id)
            .or_insert_with(|| {
                let (tx, _) = watch::channel(Arc::new(HashMap::new()));
                let product = Arc::new(Product {
                    followed: Mutex::default(),
                    tx,
                });
                tokio::spawn(run(self.inner.clone(), product_id, product.clone()));
                product
            })
            .clone();
        *product
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ticket)
            .or_default() += 1;
        metrics::gauge!("queue_stream_clients").increment(1.0);
        product
    }
}

/// One product's looks, until nothing of it is followed or the hub closes.
async fn run(inner: Arc<Inner>, id: ProductId, product: Arc<Product>) {
    let mut closed = inner.closed.subscribe();
    let mut ticks = tokio::time::interval(inner.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The listener that started this task has just read its ticket.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = closed.wait_for(|c| *c) => break,
        }
        let ids: Vec<TicketId> = {
            // Under the table's lock, so a listener joining now finds the entry still served.
            let mut products = inner.products.lock().unwrap_or_else(|p| p.into_inner());
            let followed = product.followed.lock().unwrap_or_else(|p| p.into_inner());
            if followed.is_empty() {
                products.remove(&id);
                return;
            }
            followed.keys().copied().collect()
        };
        metrics::counter!("queue_stream_checks_total").increment(1);
        let read = tokio::time::timeout(
            CHECK_TIMEOUT,
            entity::operations::queue::read_tickets(&inner.db, &ids),
        )
        .await;
        match read {
            Ok(Ok(tickets)) => {
                let now = chrono::Utc::now();
                let seen: HashMap<TicketId, TicketView> =
                    tickets.iter().map(|t| (t.model.id, t.view(now))).collect();
                product.tx.send_replace(Arc::new(seen));
            }
            Ok(Err(e)) => {
                metrics::counter!("queue_stream_check_failures_total").increment(1);
                tracing::warn!(product_id = id.get(), error = %e, "ticket stream look failed; retrying every interval");
            }
            Err(_) => {
                metrics::counter!("queue_stream_check_failures_total").increment(1);
            }
        }
    }
    inner
        .products
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

/// One listener's stream.
struct Listener {
    first: Option<TicketView>,
    last: TicketView,
    rx: watch::Receiver<Seen>,
    closed: watch::Receiver<bool>,
    client_gone: Option<Arc<AtomicBool>>,
    _following: Following,
}

impl Listener {
    async fn next(mut self) -> Option<(TicketView, Self)> {
        if let Some(first) = self.first.take() {
            return Some((first, self));
        }
        loop {
            let (rx, closed) = (&mut self.rx, &mut self.closed);
            if !crate::stream::next_change(rx, closed, self.client_gone.as_ref()).await {
                return None;
            }
            let seen = self.rx.borrow_and_update().clone();
            if let Some(view) = seen.get(&self.last.id)
                && (view.state != self.last.state || view.position != self.last.position)
            {
                self.last = view.clone();
                return Some((view.clone(), self));
            }
        }
    }
}
