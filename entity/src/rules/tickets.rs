//! The one place where queue tickets change state and a queue's counters move, beside
//! `transitions.rs` for holds and orders.
//!
//! | change                          | `queues`                                        |
//! | ------------------------------- | ----------------------------------------------- |
//! | ticket joins (waiting)          | `early_count` or `late_count` + 1, `waiting` + 1 |
//! | waiting → admitted              | `waiting` − 1, `head` moves to its place        |
//! | waiting → left / closed         | `waiting` − 1                                   |
//! | admitted → used / expired / left |                                                |
//!
//! Lock order, with the hold paths': product, then queue, then tickets. A join takes only the
//! queue's lock (it inserts tickets); a hold takes the product's, then its tickets'; leaving
//! and admission passes take all three in that order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter,
    QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    DomainError,
    db::ServerTraits,
    product::{self, Admission},
    queue,
    rules::transitions::lock_by_id,
    sql,
    ticket::{self, TicketState},
    types::{ProductId, TicketId},
};

/// Locks a product's queue row, if it has one.
pub(crate) async fn lock_queue<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
) -> Result<Option<queue::Model>, DomainError> {
    Ok(queue::Entity::find_by_id(product_id)
        .lock_exclusive()
        .one(txn)
        .await?)
}

/// Locks a ticket row: [`DomainError::TicketNotFound`] if there is none.
pub(crate) async fn lock_ticket<C: ConnectionTrait>(
    txn: &C,
    id: TicketId,
) -> Result<ticket::Model, DomainError> {
    lock_by_id::<ticket::Entity, _>(txn, id, DomainError::TicketNotFound(id)).await
}

/// Whether a queue made at `now` for `product` is open already: no opening time, or it has
/// passed. An open queue has nothing to draw.
fn opens_at_once(product: &product::Model, now: DateTime<Utc>) -> bool {
    product.sale_starts_at.is_none_or(|start| start <= now)
}

/// Gives a locked product in queue admission its queue row, or opens again the one it had
/// (closed when it went back to open admission). Does nothing for a product in open admission.
pub(crate) async fn ensure_queue<C: ConnectionTrait>(
    txn: &C,
    product: &product::Model,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if product.admission != Admission::Queue {
        return Ok(());
    }
    match lock_queue(txn, product.id).await? {
        Some(q) if q.closed => {
            queue::Entity::update_many()
                .col_expr(queue::Column::Closed, Expr::value(false))
                .col_expr(queue::Column::UpdatedAt, Expr::value(now))
                .filter(queue::Column::ProductId.eq(product.id))
                .exec(txn)
                .await?;
        }
        Some(_) => {}
        None => {
            let open = opens_at_once(product, now);
            queue::Entity::insert(queue::ActiveModel {
                product_id: Set(product.id),
                opened: Set(open),
                drawn: Set(open),
                closed: Set(false),
                early_count: Set(0),
                late_count: Set(0),
                head: Set(0),
                waiting: Set(0),
                updated_at: Set(now),
            })
            .exec_without_returning(txn)
            .await?;
        }
    }
    Ok(())
}

/// A ticket about to be made.
pub(crate) struct NewTicket<'a> {
    pub buyer: &'a str,
    pub secret_hash: Option<&'a str>,
}

/// Makes waiting tickets on a locked queue, numbered after the queue's (late tickets) or not
/// yet (early ones, before the opening), and counts them. Answers the new rows, in order: as
/// the insert returned them (MariaDB), or read back by the buyers' live tickets, which are
/// unique per product.
pub(crate) async fn join_tickets<C: ConnectionTrait>(
    txn: &C,
    server: ServerTraits,
    queue: &queue::Model,
    tickets: &[NewTicket<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<ticket::Model>, DomainError> {
    if tickets.is_empty() {
        return Ok(Vec::new());
    }
    let early = !queue.opened;
    let first = queue.early_count + queue.late_count + 1;
    let seq = |i: usize| (!early).then(|| first + i as i64);
    let backend = txn.get_database_backend();
    let buyers: Vec<&str> = tickets.iter().map(|t| t.buyer).collect();
    let found = if backend == DbBackend::Sqlite {
        let models = tickets
            .iter()
            .enumerate()
            .map(|(i, t)| ticket::ActiveModel {
                product_id: Set(queue.product_id),
                buyer_id: Set(t.buyer.to_owned()),
                live_buyer: Set(Some(t.buyer.to_owned())),
                secret_hash: Set(t.secret_hash.map(str::to_owned)),
                state: Set(TicketState::Waiting),
                early: Set(early),
                seq: Set(seq(i)),
                joined_at: Set(now),
                admitted_at: Set(None),
                admission_expires_at: Set(None),
                updated_at: Set(now),
                ..Default::default()
            });
        ticket::Entity::insert_many(models)
            .exec_without_returning(txn)
            .await?;
        live_tickets(txn, queue.product_id, &buyers).await?
    } else {
        let rows: Vec<sql::mysql::TicketRow<'_>> = tickets
            .iter()
            .enumerate()
            .map(|(i, t)| sql::mysql::TicketRow {
                b: t.buyer,
                s: t.secret_hash,
                q: seq(i),
            })
            .collect();
        let json = serde_json::to_string(&rows)
            .map_err(|e| DomainError::Invariant(format!("tickets as JSON: {e}")))?;
        let insert = |sql: &str| {
            Statement::from_sql_and_values(
                backend,
                sql,
                [
                    queue.product_id.into(),
                    TicketState::Waiting.as_str().into(),
                    early.into(),
                    now.into(),
                    now.into(),
                    json.into(),
                ],
            )
        };
        if server.insert_returning {
            let insert = insert(sql::mysql::INSERT_TICKETS_RETURNING);
            ticket::Model::find_by_statement(insert).all(txn).await?
        } else {
            txn.execute_raw(insert(sql::mysql::INSERT_TICKETS)).await?;
            live_tickets(txn, queue.product_id, &buyers).await?
        }
    };
    let mut by_buyer: HashMap<String, ticket::Model> = found
        .into_iter()
        .filter_map(|t| Some((t.live_buyer.clone()?, t)))
        .collect();
    let ids = buyers
        .iter()
        .map(|b| {
            by_buyer
                .remove(*b)
                .ok_or_else(|| DomainError::rows_lost(format!("the new ticket of {b} is gone")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = tickets.len() as i64;
    let counter = if early {
        queue::Column::EarlyCount
    } else {
        queue::Column::LateCount
    };
    queue::Entity::update_many()
        .col_expr(counter, Expr::col(counter).add(n))
        .col_expr(
            queue::Column::Waiting,
            Expr::col(queue::Column::Waiting).add(n),
        )
        .col_expr(queue::Column::UpdatedAt, Expr::value(now))
        .filter(queue::Column::ProductId.eq(queue.product_id))
        .exec(txn)
        .await?;
    Ok(ids)
}

/// The live tickets of these buyers on a product (the caller holds the queue's lock).
pub(crate) async fn live_tickets<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    buyers: &[&str],
) -> Result<Vec<ticket::Model>, DomainError> {
    if buyers.is_empty() {
        return Ok(Vec::new());
    }
    let backend = txn.get_database_backend();
    let json = serde_json::to_string(buyers)
        .map_err(|e| DomainError::Invariant(format!("buyers as JSON: {e}")))?;
    Ok(
        ticket::Model::find_by_statement(Statement::from_sql_and_values(
            backend,
            sql::of(backend).live_tickets,
            [json.into(), product_id.into()],
        ))
        .all(txn)
        .await?,
    )
}

/// Marks the queue opened (its later tickets are late), once.
pub(crate) async fn open_queue<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    queue::Entity::update_many()
        .col_expr(queue::Column::Opened, Expr::value(true))
        .col_expr(queue::Column::UpdatedAt, Expr::value(now))
        .filter(queue::Column::ProductId.eq(product_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// The draw: numbers the early tickets `1..=n` in the order given (already shuffled by the
/// caller), and marks the queue drawn. The caller holds the product's and the queue's locks.
pub(crate) async fn number_early_tickets<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    in_order: &[TicketId],
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let backend = txn.get_database_backend();
    // Chunks keep each statement's JSON small; the places are dense whatever the chunking.
    for (c, chunk) in in_order.chunks(2_000).enumerate() {
        let pairs: Vec<(i64, i64)> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| (id.get(), (c * 2_000 + i + 1) as i64))
            .collect();
        let json = serde_json::to_string(&pairs)
            .map_err(|e| DomainError::Invariant(format!("places as JSON: {e}")))?;
        let result = txn
            .execute_raw(Statement::from_sql_and_values(
                backend,
                sql::of(backend).number_tickets,
                [json.into()],
            ))
            .await?;
        if result.rows_affected() != chunk.len() as u64 {
            return Err(DomainError::rows_lost(format!(
                "numbered {} of {} early tickets",
                result.rows_affected(),
                chunk.len()
            )));
        }
    }
    queue::Entity::update_many()
        .col_expr(queue::Column::Drawn, Expr::value(true))
        .col_expr(queue::Column::UpdatedAt, Expr::value(now))
        .filter(queue::Column::ProductId.eq(product_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// What a move does besides the state.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Move {
    /// Admitted until `until`; the queue's head moves to `head`.
    Admit { until: DateTime<Utc>, head: i64 },
    /// Any other move.
    Plain,
}

/// Moves locked tickets of one product from `from` to `to`, with the queue's counters. A
/// ticket that leaves the live states frees its buyer for a new one.
pub(crate) async fn move_tickets<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    ids: &[TicketId],
    from: TicketState,
    to: TicketState,
    how: Move,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if ids.is_empty() {
        return Ok(());
    }
    if !from.can_become(to) {
        return Err(DomainError::Invariant(format!(
            "a ticket cannot go from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let mut update = ticket::Entity::update_many()
        .col_expr(ticket::Column::State, Expr::value(to.as_str()))
        .col_expr(ticket::Column::UpdatedAt, Expr::value(now));
    if !to.is_live() {
        update = update.col_expr(
            ticket::Column::LiveBuyer,
            Expr::value(Option::<String>::None),
        );
    }
    if let Move::Admit { until, .. } = how {
        update = update
            .col_expr(ticket::Column::AdmittedAt, Expr::value(now))
            .col_expr(ticket::Column::AdmissionExpiresAt, Expr::value(until));
    }
    let result = update
        .filter(ticket::Column::Id.is_in(ids.iter().copied()))
        .filter(ticket::Column::ProductId.eq(product_id))
        .filter(ticket::Column::State.eq(from))
        .exec(txn)
        .await?;
    if result.rows_affected != ids.len() as u64 {
        return Err(DomainError::Invariant(format!(
            "moved {} of {} locked tickets from {} to {}",
            result.rows_affected,
            ids.len(),
            from.as_str(),
            to.as_str()
        )));
    }
    let mut queue_update =
        queue::Entity::update_many().col_expr(queue::Column::UpdatedAt, Expr::value(now));
    if from == TicketState::Waiting {
        queue_update = queue_update.col_expr(
            queue::Column::Waiting,
            Expr::col(queue::Column::Waiting).sub(ids.len() as i64),
        );
    }
    if let Move::Admit { head, .. } = how {
        queue_update = queue_update.col_expr(queue::Column::Head, Expr::value(head));
    }
    queue_update
        .filter(queue::Column::ProductId.eq(product_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Closes a queue: no more joins.
pub(crate) async fn close_queue<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    queue::Entity::update_many()
        .col_expr(queue::Column::Closed, Expr::value(true))
        .col_expr(queue::Column::UpdatedAt, Expr::value(now))
        .filter(queue::Column::ProductId.eq(product_id))
        .exec(txn)
        .await?;
    Ok(())
}
