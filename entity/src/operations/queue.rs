//! Fair admission: the queue of a product with `admission = queue`.
//!
//! - Joining ([`serve_joins`]): a batch of join requests for one product in ONE transaction
//!   under the queue's lock (not the product's: joins do not wait for hold batches). A buyer
//!   has one live ticket per product; asking again answers it.
//! - The draw and admission ([`admit`], run by the worker every second, by any number of
//!   workers): under the product's lock, then the queue's. At the opening the early tickets are
//!   numbered in an order drawn then, from the thread's cryptographic generator, so it exists
//!   nowhere before. Then waiting tickets are admitted, in order, while the admitted and unused
//!   ones are fewer than the available stock; admissions past their window expire; after the
//!   sale, or once the stock is gone, the waiting tickets are closed.
//! - Reading ([`read_tickets`]): any number of tickets in one statement, each with its
//!   position, which is arithmetic on the queue's head and an index count of the tickets ahead
//!   that left, never a scan of the line.
//! - Holds on a queue product need the buyer's admitted ticket: [`admissions`], run by the hold
//!   batch under the product's lock.
//!
//! Ticket states and the queue's counters change only through `crate::rules::tickets`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};

use crate::{
    Db, DomainError,
    db::{ServerTraits, now, with_retry, with_retry_until},
    operations::sweeps::{ExpiredHold, reclaim_expired},
    product::{self, Admission},
    queue,
    rules::{
        ownership::{Access, ClientSecret},
        tickets::{
            Move, NewTicket, close_queue, join_tickets, live_tickets, lock_queue, lock_ticket,
            move_tickets, number_early_tickets, open_queue,
        },
        transitions::lock_product,
    },
    sql,
    ticket::{self, TicketState},
    types::{BuyerId, ProductId, TicketId},
    views::{QueueLine, TicketView},
};

/// One buyer asking to join a product's queue.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub buyer: BuyerId,
    /// An anonymous buyer's secret for the ticket (its hash is stored): fresh, or derived from
    /// the request's `Idempotency-Key`, so that a retry with that key is answered it again.
    pub secret: Option<ClientSecret>,
}

/// What became of one join request.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    /// A new ticket.
    Joined(TicketView),
    /// The buyer's live ticket for the product, made before. Its secret only to a request
    /// whose own secret is the ticket's (a keyed retry).
    Existing(TicketView),
}

/// Joins buyers to one product's queue, in order, in one transaction by `deadline`. Refused as
/// a whole when the product has no queue ([`DomainError::NoQueue`]) or its queue is closed.
pub async fn serve_joins(
    db: &Db,
    product_id: ProductId,
    requests: &[JoinRequest],
    deadline: std::time::Instant,
) -> Result<Vec<JoinOutcome>, DomainError> {
    let (outcomes, made) = with_retry_until(deadline, Some(product_id), || {
        db.write_until(deadline, async |txn| {
            join_transaction(txn, db.server(), product_id, requests).await
        })
    })
    .await?;
    for view in &made {
        tracing::info!(
            metric = "queue.joined",
            ticket_id = view.id.get(),
            product_id = product_id.get(),
            "joined the queue"
        );
    }
    if !made.is_empty() {
        metrics::counter!("queue_joined_total", "product_id" => product_id.get().to_string())
            .increment(made.len() as u64);
    }
    Ok(outcomes)
}

async fn join_transaction<C: ConnectionTrait>(
    txn: &C,
    server: ServerTraits,
    product_id: ProductId,
    requests: &[JoinRequest],
) -> Result<(Vec<JoinOutcome>, Vec<TicketView>), DomainError> {
    // Read, not locked: joins never wait for the product's lock. A change of admission or of
    // the window takes the queue's lock after the product's, so it is seen by the next batch.
    let product = product::Entity::find_by_id(product_id)
        .one(txn)
        .await?
        .ok_or(DomainError::ProductNotFound(product_id))?;
    if product.admission != Admission::Queue {
        return Err(DomainError::NoQueue(product_id));
    }
    let now = now();
    let mut queue = lock_queue(txn, product_id)
        .await?
        .ok_or(DomainError::NoQueue(product_id))?;
    if queue.closed || ended(&product, now) {
        return Err(DomainError::QueueClosed(product_id));
    }
    if !queue.opened && product.sale_starts_at.is_none_or(|s| s <= now) {
        open_queue(txn, product_id, now).await?;
        queue.opened = true;
    }
    let mut buyers: Vec<&str> = requests.iter().map(|r| r.buyer.as_str()).collect();
    buyers.sort_unstable();
    buyers.dedup();
    let before: HashMap<String, ticket::Model> = live_tickets(txn, product_id, &buyers)
        .await?
        .into_iter()
        .filter_map(|t| t.live_buyer.clone().map(|b| (b, t)))
        .collect();
    // The new tickets: one per buyer without a live one, for the first request of each.
    let mut new: Vec<usize> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let buyer = r.buyer.as_str();
        let first = !new.iter().any(|&j| requests[j].buyer.as_str() == buyer);
        if !before.contains_key(buyer) && first {
            new.push(i);
        }
    }
    let rows: Vec<NewTicket> = new
        .iter()
        .map(|&i| NewTicket {
            buyer: requests[i].buyer.as_str(),
            secret_hash: requests[i].secret.as_ref().map(|s| s.hash().as_str()),
        })
        .collect();
    let made_rows = join_tickets(txn, server, &queue, &rows, now).await?;
    let mut ticket_of: HashMap<&str, TicketId> = requests
        .iter()
        .filter_map(|r| Some((r.buyer.as_str(), before.get(r.buyer.as_str())?.id)))
        .collect();
    for (&i, t) in new.iter().zip(&made_rows) {
        ticket_of.insert(requests[i].buyer.as_str(), t.id);
    }
    // Tickets made before are read with their positions; new ones are the last in line, so
    // theirs needs only how many tickets after the head have left (one count, not one per
    // ticket: the opening storm is all new tickets).
    let existing: Vec<TicketId> = before.values().map(|t| t.id).collect();
    let mut read = read_in(txn, &existing).await?;
    if !made_rows.is_empty() {
        let line = QueueLine {
            drawn: queue.drawn,
            head: queue.head,
        };
        let left_ahead = match made_rows[0].seq {
            Some(_) if queue.drawn => left_after(txn, product_id, queue.head).await?,
            _ => 0,
        };
        read.extend(made_rows.into_iter().map(|model| TicketRead {
            model,
            line: Some(line),
            left_ahead,
        }));
    }
    let view_of = |id: TicketId| {
        read.iter()
            .find(|r| r.model.id == id)
            .map(|r| r.view(now))
            .ok_or_else(|| DomainError::rows_lost(format!("ticket {id} is gone")))
    };
    let mut made = Vec::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let id = *ticket_of
            .get(r.buyer.as_str())
            .ok_or_else(|| DomainError::Invariant("a join request has no ticket".into()))?;
        let mut view = view_of(id)?;
        if new.contains(&i) {
            view.client_secret = r.secret.clone();
            made.push(view.clone());
            outcomes.push(JoinOutcome::Joined(view));
        } else {
            let stored = read
                .iter()
                .find(|t| t.model.id == id)
                .and_then(|t| t.model.secret_hash.as_deref());
            view.client_secret = r
                .secret
                .clone()
                .filter(|secret| Access::Secret(Some(secret.expose())).owns(stored, None));
            outcomes.push(JoinOutcome::Existing(view));
        }
    }
    Ok((outcomes, made))
}

/// How many of the product's tickets after place `head` have left.
async fn left_after<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    head: i64,
) -> Result<i64, DomainError> {
    Ok(ticket::Entity::find()
        .filter(ticket::Column::ProductId.eq(product_id))
        .filter(ticket::Column::State.eq(TicketState::Left))
        .filter(ticket::Column::Seq.gt(head))
        .count(txn)
        .await? as i64)
}

/// The sale is over for the queue: its window ended, or every unit is sold.
fn ended(product: &product::Model, now: DateTime<Utc>) -> bool {
    product.sale_ends_at.is_some_and(|end| end <= now) || product.stock == 0
}

/// A ticket as read with what its position needs.
#[derive(Debug, Clone)]
pub struct TicketRead {
    pub model: ticket::Model,
    line: Option<QueueLine>,
    left_ahead: i64,
}

impl TicketRead {
    /// The ticket as its owner sees it at `now`.
    pub fn view(&self, now: DateTime<Utc>) -> TicketView {
        TicketView::at(&self.model, self.line, self.left_ahead, now)
    }

    /// Whether `access` reaches it (see [`crate::rules::ownership`]).
    pub fn owned_by(&self, access: Access<'_>) -> bool {
        access.owns(
            self.model.secret_hash.as_deref(),
            Some(self.model.buyer_id.as_str()),
        )
    }
}

#[derive(Debug, FromQueryResult)]
struct TicketRow {
    id: TicketId,
    product_id: ProductId,
    buyer_id: String,
    live_buyer: Option<String>,
    secret_hash: Option<String>,
    state: TicketState,
    early: bool,
    seq: Option<i64>,
    joined_at: DateTime<Utc>,
    admitted_at: Option<DateTime<Utc>>,
    admission_expires_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    queue_head: Option<i64>,
    queue_drawn: Option<bool>,
    left_ahead: i64,
}

impl From<TicketRow> for TicketRead {
    fn from(r: TicketRow) -> Self {
        let line = match (r.queue_head, r.queue_drawn) {
            (Some(head), Some(drawn)) => Some(QueueLine { drawn, head }),
            _ => None,
        };
        Self {
            model: ticket::Model {
                id: r.id,
                product_id: r.product_id,
                buyer_id: r.buyer_id,
                live_buyer: r.live_buyer,
                secret_hash: r.secret_hash,
                state: r.state,
                early: r.early,
                seq: r.seq,
                joined_at: r.joined_at,
                admitted_at: r.admitted_at,
                admission_expires_at: r.admission_expires_at,
                updated_at: r.updated_at,
            },
            line,
            left_ahead: r.left_ahead,
        }
    }
}

async fn read_in<C: ConnectionTrait>(
    conn: &C,
    ids: &[TicketId],
) -> Result<Vec<TicketRead>, DomainError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    let json = serde_json::to_string(&ids.iter().map(|id| id.get()).collect::<Vec<_>>())
        .map_err(|e| DomainError::Invariant(format!("ids as JSON: {e}")))?;
    let rows = TicketRow::find_by_statement(Statement::from_sql_and_values(
        backend,
        sql::of(backend).tickets_by_id,
        [json.into()],
    ))
    .all(conn)
    .await?;
    Ok(rows.into_iter().map(TicketRead::from).collect())
}

/// Tickets by id, in one statement whatever their number (missing ones are left out).
pub async fn read_tickets(db: &Db, ids: &[TicketId]) -> Result<Vec<TicketRead>, DomainError> {
    db.read(|| read_in(db.conn(), ids)).await
}

/// A ticket, for its owner: anyone else is answered [`DomainError::TicketNotFound`], as for
/// a ticket that does not exist.
pub async fn get_ticket(
    db: &Db,
    id: TicketId,
    access: Access<'_>,
) -> Result<TicketView, DomainError> {
    read_tickets(db, &[id])
        .await?
        .into_iter()
        .find(|t| t.owned_by(access))
        .map(|t| t.view(now()))
        .ok_or(DomainError::TicketNotFound(id))
}

/// Leaves the queue: a live ticket becomes `left` (an admitted one gives its place back). A
/// ticket already done is answered as it is.
pub async fn leave_queue(
    db: &Db,
    id: TicketId,
    access: Access<'_>,
) -> Result<TicketView, DomainError> {
    let found = read_tickets(db, &[id])
        .await?
        .into_iter()
        .find(|t| t.owned_by(access))
        .ok_or(DomainError::TicketNotFound(id))?;
    let product_id = found.model.product_id;
    with_retry(Some(product_id), || {
        db.write(async |txn| {
            // Product, queue, ticket: the lock order of every path that moves a ticket.
            lock_product(txn, product_id).await?;
            lock_queue(txn, product_id).await?;
            let ticket = lock_ticket(txn, id).await?;
            let now = now();
            if ticket.state.is_live() {
                move_tickets(
                    txn,
                    product_id,
                    &[id],
                    ticket.state,
                    TicketState::Left,
                    Move::Plain,
                    now,
                )
                .await?;
            }
            Ok(())
        })
    })
    .await?;
    get_ticket(db, id, access).await
}

/// What one admission pass did to a queue.
#[derive(Debug, Default, Clone)]
pub struct Pass {
    pub product_id: Option<ProductId>,
    pub drawn: usize,
    pub admitted: Vec<TicketId>,
    pub expired: Vec<TicketId>,
    pub closed: Vec<TicketId>,
    /// Expired holds whose stock the pass took back to admit from it.
    pub reclaimed: Vec<ExpiredHold>,
    /// Tickets still waiting after the pass.
    pub waiting: i64,
}

/// One admission pass over a product's queue (see the module's doc), in one transaction.
pub async fn admit(db: &Db, product_id: ProductId) -> Result<Pass, DomainError> {
    let pass = with_retry(Some(product_id), || {
        db.write(async |txn| admission_transaction(txn, product_id).await)
    })
    .await?;
    log_pass(&pass);
    Ok(pass)
}

async fn admission_transaction<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
) -> Result<Pass, DomainError> {
    let product = lock_product(txn, product_id).await?;
    let mut pass = Pass {
        product_id: Some(product_id),
        ..Pass::default()
    };
    let Some(mut queue) = lock_queue(txn, product_id).await? else {
        return Ok(pass);
    };
    let now = now();
    // Admissions past their window give their place on.
    pass.expired = ticket_ids(txn, product_id, TicketState::Admitted, Some(now)).await?;
    move_tickets(
        txn,
        product_id,
        &pass.expired,
        TicketState::Admitted,
        TicketState::Expired,
        Move::Plain,
        now,
    )
    .await?;
    if queue.closed {
        return Ok(pass);
    }
    if product.admission != Admission::Queue || ended(&product, now) {
        pass.closed = ticket_ids(txn, product_id, TicketState::Waiting, None).await?;
        for chunk in pass.closed.chunks(2_000) {
            move_tickets(
                txn,
                product_id,
                chunk,
                TicketState::Waiting,
                TicketState::Closed,
                Move::Plain,
                now,
            )
            .await?;
        }
        close_queue(txn, product_id, now).await?;
        return Ok(pass);
    }
    if !queue.opened {
        if product.sale_starts_at.is_some_and(|s| s > now) {
            pass.waiting = queue.waiting;
            return Ok(pass);
        }
        open_queue(txn, product_id, now).await?;
        queue.opened = true;
    }
    if !queue.drawn {
        pass.drawn = draw(txn, product_id, now).await?;
        queue.drawn = true;
    }
    let admitted = ticket::Entity::find()
        .filter(ticket::Column::ProductId.eq(product_id))
        .filter(ticket::Column::State.eq(TicketState::Admitted))
        .count(txn)
        .await?;
    let admitted = i64::try_from(admitted).unwrap_or(i64::MAX);
    let (available, reclaimed) = reclaim_expired(
        txn,
        product_id,
        now,
        product.available_stock,
        admitted.saturating_add(queue.waiting),
    )
    .await?;
    pass.reclaimed = reclaimed;
    let room = i64::from(available) - admitted;
    if room > 0 && queue.waiting > 0 {
        let next: Vec<(TicketId, Option<i64>)> = ticket::Entity::find()
            .select_only()
            .column(ticket::Column::Id)
            .column(ticket::Column::Seq)
            .filter(ticket::Column::ProductId.eq(product_id))
            .filter(ticket::Column::State.eq(TicketState::Waiting))
            .filter(ticket::Column::Seq.gt(queue.head))
            .order_by_asc(ticket::Column::Seq)
            .limit(room as u64)
            .into_tuple()
            .all(txn)
            .await?;
        if let Some(head) = next.iter().filter_map(|(_, seq)| *seq).max() {
            pass.admitted = next.iter().map(|(id, _)| *id).collect();
            let window = chrono::Duration::seconds(i64::from(product.admission_window_seconds));
            move_tickets(
                txn,
                product_id,
                &pass.admitted,
                TicketState::Waiting,
                TicketState::Admitted,
                Move::Admit {
                    until: now + window,
                    head,
                },
                now,
            )
            .await?;
        }
    }
    pass.waiting = queue.waiting - pass.admitted.len() as i64;
    Ok(pass)
}

/// The ids of a product's tickets in `state` (for admitted ones: whose window ended by
/// `expired_by`), in place order.
async fn ticket_ids<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    state: TicketState,
    expired_by: Option<DateTime<Utc>>,
) -> Result<Vec<TicketId>, DomainError> {
    let mut query = ticket::Entity::find()
        .select_only()
        .column(ticket::Column::Id)
        .filter(ticket::Column::ProductId.eq(product_id))
        .filter(ticket::Column::State.eq(state));
    if let Some(by) = expired_by {
        query = query.filter(ticket::Column::AdmissionExpiresAt.lte(by));
    }
    Ok(query
        .order_by_asc(ticket::Column::Seq)
        .into_tuple()
        .all(txn)
        .await?)
}

/// The draw, at the opening: every early ticket (waiting, or left before the opening) gets its
/// place `1..=n` in an order shuffled now by the thread's cryptographic generator (ChaCha,
/// seeded from the OS). Answers how many were numbered.
async fn draw<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    now: DateTime<Utc>,
) -> Result<usize, DomainError> {
    let mut early: Vec<TicketId> = ticket::Entity::find()
        .select_only()
        .column(ticket::Column::Id)
        .filter(ticket::Column::ProductId.eq(product_id))
        .filter(ticket::Column::Early.eq(true))
        .filter(ticket::Column::Seq.is_null())
        .into_tuple()
        .all(txn)
        .await?;
    early.shuffle(&mut rand::rng());
    number_early_tickets(txn, product_id, &early, now).await?;
    Ok(early.len())
}

fn log_pass(pass: &Pass) {
    let Some(product_id) = pass.product_id else {
        return;
    };
    for (ids, metric, message) in [
        (&pass.admitted, "queue.admitted", "admitted from the queue"),
        (&pass.expired, "queue.expired", "admission expired unused"),
        (&pass.closed, "queue.closed", "queue closed"),
    ] {
        for id in ids {
            tracing::info!(
                metric,
                ticket_id = id.get(),
                product_id = product_id.get(),
                "{message}"
            );
        }
    }
    let label = product_id.get().to_string();
    for (name, n) in [
        ("queue_admitted_total", pass.admitted.len()),
        ("queue_expired_total", pass.expired.len()),
        ("queue_closed_total", pass.closed.len()),
    ] {
        if n > 0 {
            metrics::counter!(name, "product_id" => label.clone()).increment(n as u64);
        }
    }
    crate::operations::sweeps::log_expired(&pass.reclaimed, "worker");
}

/// Where a queue stands, for the worker's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLevels {
    pub product_id: ProductId,
    /// Tickets waiting.
    pub waiting: i64,
    /// The queue should admit now: not closed, and its product's sale is on.
    pub admitting: bool,
    /// Admitted tickets not yet used by a hold or expired.
    pub admitted_unused: i64,
}

/// The newest `limit` queues, each read with its product and its count of admitted tickets:
/// what an admission pass would act on, read without one, so that the gauges stay true when
/// passes fail or stop.
pub async fn queue_levels(db: &Db, limit: u64) -> Result<Vec<QueueLevels>, DomainError> {
    let now = now();
    db.read(|| async {
        let queues = queue::Entity::find()
            .order_by_desc(queue::Column::ProductId)
            .limit(limit)
            .all(db.conn())
            .await?;
        let ids: Vec<ProductId> = queues.iter().map(|q| q.product_id).collect();
        let products: HashMap<ProductId, product::Model> = product::Entity::find()
            .filter(product::Column::Id.is_in(ids.iter().copied()))
            .all(db.conn())
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let admitted: HashMap<ProductId, i64> = ticket::Entity::find()
            .select_only()
            .column(ticket::Column::ProductId)
            .column_as(ticket::Column::Id.count(), "admitted")
            .filter(ticket::Column::ProductId.is_in(ids))
            .filter(ticket::Column::State.eq(TicketState::Admitted))
            .group_by(ticket::Column::ProductId)
            .into_tuple::<(ProductId, i64)>()
            .all(db.conn())
            .await?
            .into_iter()
            .collect();
        Ok(queues
            .iter()
            .map(|q| QueueLevels {
                product_id: q.product_id,
                waiting: q.waiting,
                admitting: !q.closed
                    && products.get(&q.product_id).is_some_and(|p| {
                        p.admission == Admission::Queue
                            && crate::rules::window::refusal(p, now).is_none()
                    }),
                admitted_unused: admitted.get(&q.product_id).copied().unwrap_or(0),
            })
            .collect())
    })
    .await
}

/// The queues an admission pass has work in: open ones, and closed ones with admissions left
/// to expire.
pub async fn queues_to_admit(db: &Db) -> Result<Vec<ProductId>, DomainError> {
    db.read(|| async {
        let open: Vec<ProductId> = queue::Entity::find()
            .select_only()
            .column(queue::Column::ProductId)
            .filter(queue::Column::Closed.eq(false))
            .into_tuple()
            .all(db.conn())
            .await?;
        let admitted: Vec<ProductId> = ticket::Entity::find()
            .select_only()
            .column(ticket::Column::ProductId)
            .distinct()
            .filter(ticket::Column::State.eq(TicketState::Admitted))
            .into_tuple()
            .all(db.conn())
            .await?;
        let mut all = open;
        all.extend(admitted);
        all.sort_unstable();
        all.dedup();
        Ok(all)
    })
    .await
}

/// What a hold request brings to a queue product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketPass {
    /// `BUYER_AUTH=none`: the ticket named in the body, with the `Client-Secret` sent.
    Named {
        id: TicketId,
        secret: Option<String>,
    },
    /// `BUYER_AUTH=jwt`: the buyer's live ticket for the product.
    OfBuyer,
}

/// The admitted tickets a hold batch on a locked queue product may use, one per request (in
/// order): `Ok((id, buyer))` to use (the hold is the ticket's buyer's), or the refusal. A
/// ticket serves one request of the batch; the tickets are locked until the batch commits. A
/// ticket named with a `buyer_id` other than its own is refused as if it were not found.
pub(crate) async fn admissions<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    requests: &[(Option<&TicketPass>, Option<&str>)],
    now: DateTime<Utc>,
) -> Result<Vec<Result<(TicketId, String), DomainError>>, DomainError> {
    let named: Vec<TicketId> = requests
        .iter()
        .filter_map(|(pass, _)| match pass {
            Some(TicketPass::Named { id, .. }) => Some(*id),
            _ => None,
        })
        .collect();
    let buyers: Vec<&str> = requests
        .iter()
        .filter_map(|(pass, buyer)| match pass {
            Some(TicketPass::OfBuyer) => *buyer,
            _ => None,
        })
        .collect();
    let mut tickets: Vec<ticket::Model> = Vec::new();
    if !named.is_empty() {
        tickets.extend(
            ticket::Entity::find()
                .filter(ticket::Column::Id.is_in(named))
                .lock_exclusive()
                .all(txn)
                .await?,
        );
    }
    if !buyers.is_empty() {
        tickets.extend(
            ticket::Entity::find()
                .filter(ticket::Column::ProductId.eq(product_id))
                .filter(ticket::Column::LiveBuyer.is_in(buyers))
                .lock_exclusive()
                .all(txn)
                .await?,
        );
    }
    let mut used: Vec<TicketId> = Vec::new();
    let mut answers = Vec::with_capacity(requests.len());
    for (pass, buyer) in requests {
        let found = match pass {
            None => None,
            Some(TicketPass::Named { id, secret }) => tickets.iter().find(|t| {
                t.id == *id
                    && Access::Secret(secret.as_deref()).owns(t.secret_hash.as_deref(), None)
                    && buyer.is_none_or(|b| b == t.buyer_id)
            }),
            Some(TicketPass::OfBuyer) => tickets.iter().find(|t| {
                t.product_id == product_id && t.live_buyer.as_deref() == *buyer && buyer.is_some()
            }),
        };
        let answer = match found {
            None => Err(DomainError::AdmissionRequired { ticket: None }),
            Some(t) => {
                let state = match (t.state, t.admission_expires_at) {
                    (TicketState::Admitted, Some(until)) if until <= now => TicketState::Expired,
                    (TicketState::Admitted, _) if used.contains(&t.id) => TicketState::Used,
                    (state, _) => state,
                };
                if t.product_id == product_id && state == TicketState::Admitted {
                    used.push(t.id);
                    Ok((t.id, t.buyer_id.clone()))
                } else {
                    let position = match state {
                        TicketState::Waiting => position(txn, t).await?,
                        _ => None,
                    };
                    Err(DomainError::AdmissionRequired {
                        ticket: Some((state, position)),
                    })
                }
            }
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// A waiting ticket's position, read in the hold's transaction.
async fn position<C: ConnectionTrait>(
    txn: &C,
    t: &ticket::Model,
) -> Result<Option<i64>, DomainError> {
    Ok(read_in(txn, &[t.id])
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.view(now()).position))
}

/// Marks used the tickets whose admissions a hold batch granted holds to (locked by
/// [`admissions`]).
pub(crate) async fn use_admissions<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    ids: &[TicketId],
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    move_tickets(
        txn,
        product_id,
        ids,
        TicketState::Admitted,
        TicketState::Used,
        Move::Plain,
        now,
    )
    .await
}
