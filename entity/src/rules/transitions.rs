//! The one place where holds and orders change state, together with what each change does to
//! its product's counters. Every path — API, webhook, worker — goes through here, so none can
//! move a hold or an order out of a final state, or give stock back twice.
//!
//! | change                      | `available_stock` | `stock` |
//! | --------------------------- | ----------------- | ------- |
//! | hold created                | − qty             |         |
//! | hold active → expired/released | + qty          |         |
//! | hold active → consumed (order created) |        |         |
//! | order pending → paid        |                   | − qty   |
//! | order pending → cancelled   | + qty             |         |
//! | order cancelled → paid      | − qty (if there)  | − qty   |
//! | hold extended               |                   |         |
//!
//! A cart (a hold or order of several products) is one row per product, each carrying its
//! first line's id (`cart_id`); every change here moves all its lines together, so the
//! counters stay per product. A cart's lines are locked only after its first line: whoever
//! holds the first line's lock owns the cart, and no two paths can wait on each other's lines.
//!
//! Creating a hold ([`create_holds`]) and an order ([`order_from_hold`]) happen here too, each
//! in one function with its counter change, and rows are locked through [`lock_by_id`].
//!
//! Callers hold the rows' locks (or SQLite's write lock); the updates re-check the state they
//! move from, and a mismatch is an invariant error that rolls the transaction back.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    FromQueryResult, PrimaryKeyTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement,
    sea_query::{Expr, ExprTrait, MysqlQueryBuilder, Query},
};

use crate::{
    DomainError, Money,
    db::ServerTraits,
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    product,
    rules::keys::KeyClaim,
    sql::{self, mysql::HoldRow},
    types::{HoldId, OrderId, ProductId},
};

/// Locks a row by its id (`SELECT ... FOR UPDATE`), or answers `missing`.
pub(crate) async fn lock_by_id<E: EntityTrait, C: ConnectionTrait>(
    txn: &C,
    id: <E::PrimaryKey as PrimaryKeyTrait>::ValueType,
    missing: DomainError,
) -> Result<E::Model, DomainError> {
    E::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(missing)
}

/// Locks a product row: [`DomainError::ProductNotFound`] if there is none.
pub(crate) async fn lock_product<C: ConnectionTrait>(
    txn: &C,
    id: ProductId,
) -> Result<product::Model, DomainError> {
    lock_by_id::<product::Entity, _>(txn, id, DomainError::ProductNotFound(id)).await
}

/// Locks a hold row: [`DomainError::HoldNotFound`] if there is none.
pub(crate) async fn lock_hold<C: ConnectionTrait>(
    txn: &C,
    id: HoldId,
) -> Result<hold::Model, DomainError> {
    lock_by_id::<hold::Entity, _>(txn, id, DomainError::HoldNotFound(id)).await
}

/// Locks an order row: [`DomainError::OrderNotFound`] if there is none.
pub(crate) async fn lock_order<C: ConnectionTrait>(
    txn: &C,
    id: OrderId,
) -> Result<order::Model, DomainError> {
    lock_by_id::<order::Entity, _>(txn, id, DomainError::OrderNotFound(id)).await
}

/// The part of a hold a transition needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct HoldRef {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
    pub cart_id: Option<HoldId>,
}

impl HoldRef {
    /// The id clients know it by: its cart's, for a line of a cart.
    pub fn public_id(&self) -> HoldId {
        self.cart_id.unwrap_or(self.id)
    }
}

impl From<&hold::Model> for HoldRef {
    fn from(h: &hold::Model) -> Self {
        Self {
            id: h.id,
            product_id: h.product_id,
            qty: h.qty,
            cart_id: h.cart_id,
        }
    }
}

/// Every line of a locked hold, locked (in id order), the hold itself first: one row for a
/// hold of one product. A cart's lines are locked only by whoever holds its first line.
pub(crate) async fn lock_lines(
    txn: &DatabaseTransaction,
    hold: hold::Model,
) -> Result<Vec<hold::Model>, DomainError> {
    if !hold.is_cart() {
        return Ok(vec![hold]);
    }
    let others = hold::Entity::find()
        .filter(hold::Column::CartId.eq(hold.id))
        .order_by_asc(hold::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    Ok(std::iter::once(hold).chain(others).collect())
}

/// Every row of a locked order, the order itself first (see [`lock_lines`]).
pub(crate) async fn lock_order_lines(
    txn: &DatabaseTransaction,
    order: order::Model,
) -> Result<Vec<order::Model>, DomainError> {
    if order.cart_id != Some(order.id) {
        return Ok(vec![order]);
    }
    let lines = order::Entity::find()
        .filter(order::Column::CartId.eq(order.id))
        .order_by_asc(order::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    match lines.first() {
        Some(first) if first.id == order.id => Ok(lines),
        _ => Err(DomainError::Invariant(format!(
            "order {} has no first line of its own",
            order.id
        ))),
    }
}

/// Gives the locked active lines of a hold a new expiry, and counts the extension.
pub(crate) async fn extend_holds(
    txn: &DatabaseTransaction,
    lines: &[hold::Model],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let result = hold::Entity::update_many()
        .col_expr(hold::Column::ExpiresAt, Expr::value(expires_at))
        .col_expr(
            hold::Column::Extensions,
            Expr::col(hold::Column::Extensions).add(1),
        )
        .col_expr(hold::Column::UpdatedAt, Expr::value(now))
        .filter(hold::Column::Id.is_in(lines.iter().map(|h| h.id)))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .filter(hold::Column::ExpiresAt.gt(now))
        .exec(txn)
        .await?;
    if result.rows_affected != lines.len() as u64 {
        return Err(DomainError::Invariant(format!(
            "extended {} of {} locked active lines",
            result.rows_affected,
            lines.len()
        )));
    }
    Ok(())
}

/// Moves locked active holds to `to`; for expired and released holds their quantity is
/// available again (products updated in id order, so two sweepers never deadlock).
pub(crate) async fn move_holds<C: ConnectionTrait>(
    txn: &C,
    holds: &[HoldRef],
    to: HoldStatus,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if holds.is_empty() {
        return Ok(());
    }
    if !HoldStatus::Active.can_become(to) {
        return Err(DomainError::Invariant(format!(
            "a hold cannot become {}",
            to.as_str()
        )));
    }
    let returns_stock = matches!(to, HoldStatus::Expired | HoldStatus::Released);
    let mut per_product: BTreeMap<ProductId, i32> = BTreeMap::new();
    if returns_stock {
        for h in holds {
            *per_product.entry(h.product_id).or_default() += h.qty;
        }
        lock_products(txn, per_product.keys().copied()).await?;
    }
    let result = hold::Entity::update_many()
        .col_expr(hold::Column::Status, Expr::value(to.as_str()))
        .col_expr(hold::Column::UpdatedAt, Expr::value(now))
        .filter(hold::Column::Id.is_in(holds.iter().map(|h| h.id)))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .exec(txn)
        .await?;
    if result.rows_affected != holds.len() as u64 {
        return Err(DomainError::Invariant(format!(
            "moved {} of {} locked holds to {}",
            result.rows_affected,
            holds.len(),
            to.as_str()
        )));
    }
    for (product_id, qty) in per_product {
        adjust_product(txn, product_id, qty, 0).await?;
    }
    Ok(())
}

/// Takes the product rows' exclusive locks (in id order) before any child row of theirs
/// changes. Updating a hold or order row makes InnoDB check its foreign key with a *shared*
/// lock on the product; upgrading that to exclusive later, while a hold batch waits for the
/// same row, is a deadlock. Locking exclusively first avoids the upgrade.
pub(crate) async fn lock_products<C: ConnectionTrait>(
    txn: &C,
    ids: impl IntoIterator<Item = ProductId>,
) -> Result<(), DomainError> {
    for id in ids {
        product::Entity::find_by_id(id)
            .select_only()
            .column(product::Column::Id)
            .lock_exclusive()
            .into_tuple::<HoldId>()
            .one(txn)
            .await?
            .ok_or(DomainError::ProductNotFound(id))?;
    }
    Ok(())
}

/// Creates active holds on a locked product, one per entry of `holds`, and takes their
/// quantity out of its available stock: the rows and the counter change together. The caller
/// has checked that the stock is there. Answers the new holds' ids in the order of `holds`.
pub(crate) async fn create_holds(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    product: &product::Model,
    holds: &[NewHold<'_>],
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Vec<HoldId>, DomainError> {
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let product_id = product.id;
    let ids = insert_holds(
        txn,
        server,
        product,
        holds,
        &HashMap::new(),
        now,
        expires_at,
    )
    .await?;
    adjust_product(
        txn,
        product_id,
        -holds.iter().map(|h| h.qty).sum::<i32>(),
        0,
    )
    .await?;
    Ok(ids)
}

/// Creates new holds on several locked products (each product's with one statement, in the
/// order given, which must be the products' id order, so that every cart's first line exists
/// before its others) and takes their quantities out of the products' available stock with one
/// more statement: the rows and the counters change together. The caller has checked that the
/// stock is there. Answers each product's new ids, in the order of its holds.
pub(crate) async fn create_all(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    per_product: &[(&product::Model, Vec<NewHold<'_>>)],
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Vec<Vec<HoldId>>, DomainError> {
    let mut ids = Vec::with_capacity(per_product.len());
    let mut firsts: HashMap<usize, HoldId> = HashMap::new();
    let mut taken = sea_orm::sea_query::CaseStatement::new();
    let mut products = Vec::new();
    for (product, holds) in per_product {
        if holds.is_empty() {
            ids.push(Vec::new());
            continue;
        }
        let made = insert_holds(txn, server, product, holds, &firsts, now, expires_at).await?;
        for (hold, id) in holds.iter().zip(&made) {
            if let Some(CartLink::First { cart, .. }) = hold.cart {
                firsts.insert(cart, *id);
            }
        }
        ids.push(made);
        let qty: i32 = holds.iter().map(|h| h.qty).sum();
        taken = taken.case(product::Column::Id.eq(product.id), Expr::value(qty));
        products.push(product.id);
    }
    if products.is_empty() {
        return Ok(ids);
    }
    let taken: sea_orm::sea_query::SimpleExpr = taken.finally(Expr::value(0)).into();
    product::Entity::update_many()
        .col_expr(
            product::Column::AvailableStock,
            Expr::col(product::Column::AvailableStock).sub(taken),
        )
        .filter(product::Column::Id.is_in(products))
        .exec(txn)
        .await?;
    Ok(ids)
}

/// Turns the locked active lines of a hold (see [`lock_lines`]; the hold itself first) into a
/// pending order and consumes them, in one step (the units move from the hold to the order;
/// no counter changes). A cart becomes one order of as many rows, each carrying the first's
/// id. Answers the order's rows (first line first) and `true`, or, when the unique key on
/// `hold_id` says someone made it first, that order's rows and `false`.
pub(crate) async fn order_from_hold(
    txn: &DatabaseTransaction,
    lines: &[hold::Model],
    now: DateTime<Utc>,
) -> Result<(Vec<order::Model>, bool), DomainError> {
    let Some(first) = lines.first() else {
        return Err(DomainError::Invariant("an order of no lines".into()));
    };
    let cart = first.is_cart();
    let mut rows: Vec<order::Model> = Vec::with_capacity(lines.len());
    for hold in lines {
        let mut order = order_row(txn, hold, now).await?;
        order.cart_id = rows.first().map(|o| o.id);
        let model = order::ActiveModel {
            hold_id: Set(order.hold_id),
            product_id: Set(order.product_id),
            quantity: Set(order.quantity),
            total_cents: Set(order.total_cents),
            status: Set(OrderStatus::Pending),
            created_at: Set(now),
            updated_at: Set(now),
            buyer_id: Set(order.buyer_id.clone()),
            secret_hash: Set(order.secret_hash.clone()),
            cart_id: Set(order.cart_id),
            ..Default::default()
        };
        order.id = match order::Entity::insert(model).exec(txn).await {
            Ok(r) => r.last_insert_id,
            Err(e)
                if rows.is_empty()
                    && matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                // The unique key on hold_id is the last word: someone made it first.
                let order = order::Entity::find()
                    .filter(order::Column::HoldId.eq(hold.id))
                    .one(txn)
                    .await?
                    .ok_or_else(|| DomainError::from(e))?;
                return Ok((order_rows(txn, order).await?, false));
            }
            Err(e) => return Err(e.into()),
        };
        rows.push(order);
    }
    if cart {
        // The first line's own row carries its id too, as a cart's holds do.
        let first_id = rows[0].id;
        order::Entity::update_many()
            .col_expr(order::Column::CartId, Expr::value(first_id))
            .filter(order::Column::Id.eq(first_id))
            .exec(txn)
            .await?;
        rows[0].cart_id = Some(first_id);
    }
    let refs: Vec<HoldRef> = lines.iter().map(HoldRef::from).collect();
    move_holds(txn, &refs, HoldStatus::Consumed, now).await?;
    Ok((rows, true))
}

/// An order's rows, read (not locked) from its first: itself for an order of one product.
pub(crate) async fn order_rows<C: ConnectionTrait>(
    conn: &C,
    order: order::Model,
) -> Result<Vec<order::Model>, DomainError> {
    if order.cart_id != Some(order.id) {
        return Ok(vec![order]);
    }
    Ok(order::Entity::find()
        .filter(order::Column::CartId.eq(order.id))
        .order_by_asc(order::Column::Id)
        .all(conn)
        .await?)
}

/// The order row a hold line becomes (its id still to be given by the insert).
async fn order_row(
    txn: &DatabaseTransaction,
    hold: &hold::Model,
    now: DateTime<Utc>,
) -> Result<order::Model, DomainError> {
    let hold_id = hold.id;
    let unit_price = match hold.unit_price_cents {
        Some(cents) => cents,
        // A hold made before prices were kept on holds: the product's price, as then.
        None => {
            product::Entity::find_by_id(hold.product_id)
                .one(txn)
                .await?
                .ok_or(DomainError::ProductNotFound(hold.product_id))?
                .price_cents
        }
    };
    let qty = u32::try_from(hold.qty)
        .map_err(|_| DomainError::Invariant(format!("hold {hold_id} qty {}", hold.qty)))?;
    // Prices are refused when they could not be multiplied by `MAX_HOLD_QTY` (see
    // `Money::times`): an overflow here is a broken invariant, never a wrong total.
    let total_cents = Money::from_cents(unit_price)
        .times(qty)
        .ok_or_else(|| {
            DomainError::Invariant(format!(
                "hold {hold_id}: {unit_price} cents × {qty} overflows"
            ))
        })?
        .cents();
    Ok(order::Model {
        id: OrderId::new(0),
        hold_id,
        product_id: hold.product_id,
        quantity: hold.qty,
        total_cents,
        status: OrderStatus::Pending,
        created_at: now,
        updated_at: now,
        buyer_id: hold.buyer_id.clone(),
        refund_required: false,
        secret_hash: hold.secret_hash.clone(),
        cart_id: None,
    })
}

/// Adds `qty` units (negative: takes them away) to a locked product's `stock` and
/// `available_stock` together: a restock or a removal by an operator. The caller has checked
/// that the available stock covers a removal.
pub(crate) async fn restock<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    qty: i32,
) -> Result<(), DomainError> {
    adjust_product(txn, product_id, qty, qty).await
}

/// Moves a locked order's rows (one per product; see [`lock_order_lines`]) to `to` and applies
/// the change to their products. Cancelled → paid needs every line's quantity to be available
/// again now: if one is not, nothing changes and the answer is
/// [`DomainError::InsufficientStock`] (with that line's product's `available`).
pub(crate) async fn move_order<C: ConnectionTrait>(
    txn: &C,
    rows: &[order::Model],
    to: OrderStatus,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let from = first.status;
    if !from.can_become(to) || rows.iter().any(|o| o.status != from) {
        return Err(DomainError::Invariant(format!(
            "order {} cannot go from {} to {}",
            first.id,
            from.as_str(),
            to.as_str()
        )));
    }
    // The products first, exclusively and in id order (see `lock_products`), then the rows.
    let mut by_product: Vec<&order::Model> = rows.iter().collect();
    by_product.sort_by_key(|o| o.product_id);
    let mut deltas = Vec::with_capacity(rows.len());
    for order in by_product {
        let q = order.quantity;
        let product = lock_product(txn, order.product_id).await?;
        deltas.push((
            order.product_id,
            match (from, to) {
                (OrderStatus::Pending, OrderStatus::Paid) => (0, -q),
                (OrderStatus::Pending, OrderStatus::Cancelled) => (q, 0),
                (OrderStatus::Cancelled, OrderStatus::Paid) => {
                    if product.available_stock < q {
                        return Err(DomainError::InsufficientStock {
                            available: product.available_stock,
                        });
                    }
                    (-q, -q)
                }
                _ => unreachable!("checked by can_become"),
            },
        ));
    }
    let result = order::Entity::update_many()
        .col_expr(order::Column::Status, Expr::value(to.as_str()))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.is_in(rows.iter().map(|o| o.id)))
        .filter(order::Column::Status.eq(from))
        .exec(txn)
        .await?;
    if result.rows_affected != rows.len() as u64 {
        return Err(DomainError::Invariant(format!(
            "order {} was not {} any more",
            first.id,
            from.as_str()
        )));
    }
    for (product_id, (available_delta, stock_delta)) in deltas {
        adjust_product(txn, product_id, available_delta, stock_delta).await?;
    }
    Ok(())
}

/// Marks a locked cancelled order (all its rows) as owing its payment back; `false` if it
/// already was.
pub(crate) async fn mark_refund_required<C: ConnectionTrait>(
    txn: &C,
    rows: &[order::Model],
    now: DateTime<Utc>,
) -> Result<bool, DomainError> {
    let Some(first) = rows.first() else {
        return Ok(false);
    };
    if rows.iter().any(|o| o.status != OrderStatus::Cancelled) {
        return Err(DomainError::Invariant(format!(
            "order {} is {}: only a cancelled order can owe a refund",
            first.id,
            first.status.as_str()
        )));
    }
    let result = order::Entity::update_many()
        .col_expr(order::Column::RefundRequired, Expr::value(true))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.is_in(rows.iter().map(|o| o.id)))
        .filter(order::Column::RefundRequired.eq(false))
        .exec(txn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Clears a locked order's refund mark (all its rows): [`DomainError::NoRefundDue`] if it has
/// none.
pub(crate) async fn clear_refund_required<C: ConnectionTrait>(
    txn: &C,
    rows: &[order::Model],
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    if !first.refund_required {
        return Err(DomainError::NoRefundDue(first.id));
    }
    order::Entity::update_many()
        .col_expr(order::Column::RefundRequired, Expr::value(false))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.is_in(rows.iter().map(|o| o.id)))
        .exec(txn)
        .await?;
    Ok(())
}

/// Changes a product's counters. The table's CHECK constraints refuse an available stock below
/// 0 or above `stock`, so even a wrong delta cannot oversell.
async fn adjust_product<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    available_delta: i32,
    stock_delta: i32,
) -> Result<(), DomainError> {
    if available_delta == 0 && stock_delta == 0 {
        return Ok(());
    }
    let mut update = product::Entity::update_many().filter(product::Column::Id.eq(product_id));
    if available_delta != 0 {
        update = update.col_expr(
            product::Column::AvailableStock,
            Expr::col(product::Column::AvailableStock).add(available_delta),
        );
    }
    if stock_delta != 0 {
        update = update.col_expr(
            product::Column::Stock,
            Expr::col(product::Column::Stock).add(stock_delta),
        );
    }
    update.exec(txn).await?;
    Ok(())
}

/// A hold about to be created.
pub(crate) struct NewHold<'a> {
    pub qty: i32,
    /// Its anonymous owner's secret, as stored (see `crate::rules::ownership`).
    pub secret_hash: Option<&'a str>,
    pub buyer: Option<&'a str>,
    /// The request's `Idempotency-Key` and fingerprint, written on the hold row.
    pub key: Option<&'a KeyClaim>,
    /// For a line of a cart: which cart of the transaction, and whether it is its first.
    pub cart: Option<CartLink>,
}

/// Where a new hold stands in a cart of its transaction (`cart` numbers the transaction's
/// carts): its first line, with the cart's number of lines, or another line, which carries the
/// first's id. The first line of every cart is created before its others (products in id order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CartLink {
    First { cart: usize, lines: i32 },
    Line { cart: usize },
}

/// Inserts new active holds (the rows only: [`create_holds`] takes their stock), one per entry of `holds`, and returns their ids in that order.
///
/// The ids are always the rows' own: read from the insert itself or read back, never computed
/// as `LAST_INSERT_ID() + k`, which is wrong whenever `auto_increment_increment` > 1 (Galera
/// sets it to the cluster size, MySQL Group Replication multi-primary to 7) or the lock mode
/// interleaves (`innodb_autoinc_lock_mode=2`, MySQL 8's default).
///
/// - MariaDB 10.6+: ONE prepared statement for every batch size — the quantities go in as a
///   bound JSON array expanded by `JSON_TABLE`, in arrival order, and `RETURNING` gives back
///   each row's id and quantity. A fixed statement is prepared once per connection, where a
///   `VALUES` list would be a new statement (a PREPARE and a parse under the row lock) for
///   every batch size.
/// - MySQL 8 (no `RETURNING`): a multi-row INSERT sent as text, with only values this code
///   made inlined (integers and its own times), then the ids read back under the product lock.
/// - SQLite: a bound multi-row INSERT, then the same read-back; the database write lock is held.
async fn insert_holds(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    product: &product::Model,
    holds: &[NewHold<'_>],
    firsts: &HashMap<usize, HoldId>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Vec<HoldId>, DomainError> {
    // Each line's cart columns: a first line's count of lines, another's first line's id.
    let mut carts = Vec::with_capacity(holds.len());
    for h in holds {
        carts.push(match h.cart {
            None => (None, None),
            Some(CartLink::First { lines, .. }) => (None, Some(lines)),
            Some(CartLink::Line { cart }) => match firsts.get(&cart) {
                Some(first) => (Some(*first), None),
                None => {
                    return Err(DomainError::Invariant(format!(
                        "a line of cart {cart} before its first"
                    )));
                }
            },
        });
    }
    let backend = txn.get_database_backend();
    let product_id = product.id;
    // The price of every hold of the batch: the product's, read under its lock.
    let unit_price = product.price_cents;
    let qtys: Vec<i32> = holds.iter().map(|h| h.qty).collect();
    let has_strings = holds.iter().any(|h| {
        h.buyer.is_some() || h.key.is_some() || h.secret_hash.is_some() || h.cart.is_some()
    });
    // Buyer ids and keys are the client's strings: bound, never inlined into SQL text.
    let min_id = if backend == DbBackend::Sqlite || (has_strings && !server.insert_returning) {
        let models = holds.iter().zip(&carts).map(|(h, cart)| hold::ActiveModel {
            product_id: Set(product_id),
            qty: Set(h.qty),
            buyer_id: Set(h.buyer.map(str::to_owned)),
            idem_key: Set(h.key.map(|k| k.key.clone())),
            idem_fingerprint: Set(h.key.map(|k| k.fingerprint.clone())),
            secret_hash: Set(h.secret_hash.map(str::to_owned)),
            unit_price_cents: Set(Some(unit_price)),
            cart_id: Set(cart.0),
            cart_lines: Set(cart.1),
            status: Set(HoldStatus::Active),
            expires_at: Set(expires_at),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        });
        hold::Entity::insert_many(models)
            .exec_without_returning(txn)
            .await
            .map_err(key_taken)?;
        None
    } else if server.insert_returning {
        let rows: Vec<HoldRow<'_>> = holds
            .iter()
            .zip(&carts)
            .map(|(h, cart)| match (h.secret_hash, h.buyer, h.key, cart) {
                (s, b, k, (Some(_), _) | (_, Some(_))) => HoldRow::Line((
                    h.qty,
                    s,
                    b,
                    k.map(|k| k.key.as_str()),
                    k.map(|k| k.fingerprint.as_str()),
                    cart.0.map(HoldId::get),
                    cart.1,
                )),
                (None, None, None, _) => HoldRow::Qty((h.qty,)),
                (Some(s), None, None, _) => HoldRow::Secret((h.qty, s)),
                (s, Some(b), None, _) => HoldRow::Buyer((h.qty, s, b)),
                (s, b, Some(k), _) => HoldRow::Keyed((h.qty, s, b, &k.key, &k.fingerprint)),
            })
            .collect();
        let json = serde_json::to_string(&rows)
            .map_err(|e| DomainError::Invariant(format!("holds as JSON: {e}")))?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                sql::mysql::INSERT_HOLDS_RETURNING,
                [
                    product_id.into(),
                    HoldStatus::Active.as_str().into(),
                    expires_at.into(),
                    now.into(),
                    now.into(),
                    unit_price.into(),
                    json.into(),
                ],
            ))
            .await
            .map_err(key_taken)?;
        let mut ids = Vec::with_capacity(rows.len());
        for (row, &want) in rows.iter().zip(&qtys) {
            let qty: i32 = row.try_get("", "qty")?;
            if qty != want {
                return Err(DomainError::Invariant(format!(
                    "RETURNING answered qty {qty} where {want} was inserted"
                )));
            }
            ids.push(row.try_get::<HoldId>("", "id")?);
        }
        return check_all_ids(ids, qtys.len());
    } else {
        let mut insert = Query::insert();
        insert.into_table(hold::Entity).columns([
            hold::Column::ProductId,
            hold::Column::Qty,
            hold::Column::Status,
            hold::Column::ExpiresAt,
            hold::Column::CreatedAt,
            hold::Column::UpdatedAt,
            hold::Column::UnitPriceCents,
        ]);
        let (expires, created) = (expires_at.naive_utc(), now.naive_utc());
        for &qty in &qtys {
            insert.values_panic([
                product_id.into(),
                qty.into(),
                HoldStatus::Active.as_str().into(),
                expires.into(),
                created.into(),
                created.into(),
                unit_price.into(),
            ]);
        }
        let result = txn
            .execute_unprepared(&insert.to_string(MysqlQueryBuilder))
            .await?;
        // The first id of a multi-row INSERT; the others are larger, spaced as the server likes.
        i64::try_from(result.last_insert_id()).ok()
    };
    // Our rows are this product's newest with exactly these times: every insert for a product
    // happens under its row lock (or SQLite's write lock), and ids only grow.
    let mut query = hold::Entity::find()
        .select_only()
        .column(hold::Column::Id)
        .filter(hold::Column::ProductId.eq(product_id))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .filter(hold::Column::ExpiresAt.eq(expires_at))
        .filter(hold::Column::CreatedAt.eq(now));
    if let Some(min_id) = min_id {
        query = query.filter(hold::Column::Id.gte(min_id));
    }
    let mut ids = query
        .order_by_desc(hold::Column::Id)
        .limit(qtys.len() as u64)
        .into_tuple::<HoldId>()
        .all(txn)
        .await?;
    ids.reverse();
    check_all_ids(ids, qtys.len())
}

/// A hold's key already on another hold (the unique index): a twin in another process was
/// granted first. The batch is lost and retried, and then checks its keys before granting.
fn key_taken(e: DbErr) -> DomainError {
    if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        DomainError::rows_lost(format!(
            "an idempotency key was written by a concurrent request: {e}"
        ))
    } else {
        e.into()
    }
}

/// Fewer ids than rows inserted means the transaction lost its rows (a Galera abort between
/// the INSERT and the read): retried as contention, never answered with wrong ids or a 500.
fn check_all_ids(ids: Vec<HoldId>, inserted: usize) -> Result<Vec<HoldId>, DomainError> {
    if ids.len() == inserted {
        Ok(ids)
    } else {
        Err(DomainError::rows_lost(format!(
            "inserted {inserted} holds, found {} ids",
            ids.len()
        )))
    }
}
