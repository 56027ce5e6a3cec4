//! The queue of a product with `queue` admission: joining it, reading, leaving and following a
//! ticket. Joins are served per product in batches (`JoinDesk`), reads share one statement
//! (`TicketReads`), streams one look per queued product per interval (`TicketHub`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    operations::queue::{self, JoinOutcome, JoinRequest},
    rules::ownership::ClientSecret,
    types::{BuyerId, ProductId, TicketId},
    views::TicketView,
};
use futures_util::stream::BoxStream;
use poem::{Request, web::sse::Event};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Path,
    payload::EventStream,
    types::{Example, ToJSON},
};
use serde::Deserialize;

use super::{ApiTags, problems, stream::KEEP_ALIVE};
use crate::{
    AppState,
    buyers::{Caller, Owner, Purchaser, identified},
    client_addr::ClientKey,
    error::{ApiError, ProblemCode, Problems},
    idempotency::IdempotencyKey,
    states::TicketState,
    types::{Json, JsonBody},
};

/// Join a product's queue.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct JoinQueue {
    /// Who joins: 1 to 128 characters, no control characters, compared exactly. Required with
    /// `BUYER_AUTH=none` (one live ticket per buyer and product); with `jwt` the buyer is the
    /// token's `sub`: leave this out, or send the same.
    #[oai(
        skip_serializing_if_is_none,
        validator(min_length = 1, max_length = 128)
    )]
    #[serde(default)]
    pub buyer_id: Option<String>,
}

impl Example for JoinQueue {
    fn example() -> Self {
        Self {
            buyer_id: Some("user-42".into()),
        }
    }
}

/// A place in a product's queue.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Ticket {
    pub ticket_id: i64,
    pub product_id: i64,
    pub buyer_id: String,
    // Described by `TicketState` itself: a description here would wrap the `$ref` in `allOf`.
    pub state: TicketState,
    /// How many waiting tickets are ahead of this one in admission order; 0 once admitted.
    /// Null before the sale opens (the order of the early tickets is drawn at the opening and
    /// exists nowhere before), and once the ticket is used, expired, left or closed.
    #[oai(validator(minimum(value = "0")))]
    pub position: Option<i64>,
    /// When it joined (RFC 3339, UTC).
    pub joined_at: DateTime<Utc>,
    /// When it was admitted; null until then.
    pub admitted_at: Option<DateTime<Utc>>,
    /// Until when an admitted ticket may make its one hold; null until admitted.
    pub admission_expires_at: Option<DateTime<Utc>>,
    /// With `BUYER_AUTH=none`: what reaches this ticket (header `Client-Secret`) and makes its
    /// hold. Only in the answer that made the ticket, and to a retry of that join with the
    /// same `Idempotency-Key`: keep it. Null otherwise, and with `jwt`.
    pub client_secret: Option<String>,
}

impl Example for Ticket {
    fn example() -> Self {
        Self {
            ticket_id: 1,
            product_id: 1,
            buyer_id: "user-42".into(),
            state: TicketState::Waiting,
            position: Some(42),
            joined_at: DateTime::from_timestamp(1_796_139_000, 0).unwrap_or_default(),
            admitted_at: None,
            admission_expires_at: None,
            client_secret: Some("q3pC1l2m0W8yq6b9cV4xZg".into()),
        }
    }
}

impl From<TicketView> for Ticket {
    fn from(t: TicketView) -> Self {
        Self {
            ticket_id: t.id.get(),
            product_id: t.product_id.get(),
            buyer_id: t.buyer_id,
            state: t.state.into(),
            position: t.position,
            joined_at: t.joined_at,
            admitted_at: t.admitted_at,
            admission_expires_at: t.admission_expires_at,
            client_secret: t.client_secret.map(|s| s.expose().to_owned()),
        }
    }
}

#[derive(ApiResponse)]
pub enum Joined {
    /// A new ticket, `waiting`.
    #[oai(status = 201)]
    Created(
        Json<Ticket>,
        /// The ticket's path.
        #[oai(header = "Location")]
        String,
    ),
    /// The buyer's live ticket for this product, made before (one per buyer and product).
    #[oai(status = 200)]
    Existing(Json<Ticket>),
}

#[derive(ApiResponse)]
pub enum TicketFound {
    /// The ticket, with its position.
    #[oai(status = 200)]
    Ok(Json<Ticket>),
}

#[derive(ApiResponse)]
pub enum TicketLeft {
    /// The ticket, now `left` (or as it was, when it was already used, expired, left or
    /// closed).
    #[oai(status = 200)]
    Ok(Json<Ticket>),
}

#[derive(ApiResponse)]
pub enum TicketStream {
    /// `text/event-stream`: at once one `event: ticket` whose `data` is the ticket, then one
    /// more each time its `state` or `position` changes (each API process looks once per
    /// `QUEUE_STREAM_INTERVAL_MS`), and a `:` comment line at least every 15 s.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, Ticket>>),
}

problems!(JoinQueueProblems = "joinQueue": [
    MalformedRequest, Unauthorized, ProductNotFound, NoQueue, QueueClosed, BuyerIdRequired,
    ValidationError, PayloadTooLarge, UnsupportedMediaType, Internal, Unavailable,
]);
problems!(GetTicketProblems = "getTicket": [
    MalformedRequest, Unauthorized, TicketNotFound, Internal, Unavailable,
]);
problems!(LeaveQueueProblems = "leaveQueue": [
    MalformedRequest, Unauthorized, TicketNotFound, Internal, Unavailable,
]);
problems!(StreamTicketProblems = "streamTicket": [
    MalformedRequest, Unauthorized, TicketNotFound, RateLimited, Internal, Unavailable,
]);

pub struct QueueApi {
    pub state: Arc<AppState>,
}

/// Who joins: a token's buyer (a body `buyer_id` must say the same), or the body's.
fn joiner(caller: &Caller, named: Option<&str>) -> Result<BuyerId, ApiError> {
    match (caller.buyer(), named) {
        (Some(buyer), Some(named)) if named != buyer.as_str() => Err(ApiError::validation(
            "buyer_id",
            "must be left out or be the token's buyer (`sub`)",
        )),
        (Some(buyer), _) => Ok(buyer.clone()),
        (None, None) => Err(ApiError::field(
            ProblemCode::BuyerIdRequired,
            "buyer_id",
            "a queue has one ticket per buyer: name the buyer",
        )),
        (None, Some(named)) => BuyerId::parse(named).ok_or_else(|| {
            ApiError::validation(
                "buyer_id",
                "must be 1 to 128 characters, none of them a control character",
            )
        }),
    }
}

/// The secret of an anonymous buyer's new ticket: derived from the join's `Idempotency-Key`
/// when it has one (a retry is answered it again), random otherwise.
fn ticket_secret(
    caller: &Caller,
    product: ProductId,
    buyer: &BuyerId,
    key: Option<&str>,
) -> Option<ClientSecret> {
    match caller {
        Caller::Buyer(_) => None,
        Caller::Anonymous { .. } => Some(match key {
            Some(key) => ClientSecret::for_ticket(product.get(), buyer.as_str(), key),
            None => ClientSecret::random(),
        }),
    }
}

/// A ticket read for its owner: anyone else is answered as for a ticket that does not exist.
async fn owned_ticket(
    state: &AppState,
    id: TicketId,
    caller: &Caller,
) -> Result<TicketView, ApiError> {
    let read = state.ticket_reads.read(id).await.map_err(ApiError::from)?;
    read.filter(|t| t.owned_by(caller.access()))
        .map(|t| t.view(chrono::Utc::now()))
        .ok_or_else(|| entity::DomainError::TicketNotFound(id).into())
}

#[OpenApi(tag = "ApiTags::Queue")]
impl QueueApi {
    /// Join a product's queue
    ///
    /// On a product with `queue` admission. Before the sale opens, everyone who joins is in
    /// the draw: at the opening their order is drawn at random, and all of them come before
    /// anyone who joins later (then in joining order). Waiting tickets are admitted as stock
    /// allows, within about a second; an admitted ticket makes one hold within the product's
    /// `admission_window_seconds`. Joining again answers 200 with the buyer's live ticket. An
    /// `open` product answers 409 `no_queue`; a queue after its sale, or with no stock left,
    /// 409 `queue_closed`.
    #[oai(
        path = "/api/products/:id/queue",
        method = "post",
        operation_id = "joinQueue",
        transform = "identified"
    )]
    async fn join_queue(
        &self,
        purchaser: Purchaser,
        /// The product's id.
        id: Path<i64>,
        /// Optional: with `BUYER_AUTH=none`, a retry of this join with the same key is
        /// answered the ticket's `client_secret` again (1 to 255 printable ASCII characters,
        /// bare or in double quotes). A join is idempotent by buyer and product anyway.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        key: IdempotencyKey,
        body: JsonBody<JoinQueue>,
    ) -> Result<Joined, Problems<JoinQueueProblems>> {
        let caller = purchaser.0;
        let product = ProductId::new(id.0);
        let buyer = joiner(&caller, body.buyer_id.as_deref())?;
        let secret = ticket_secret(&caller, product, &buyer, key.0.as_deref());
        let request = JoinRequest { buyer, secret };
        match self.state.joins.join(product, request).await {
            Ok(JoinOutcome::Joined(ticket)) => {
                let path = crate::locations::ticket(ticket.id.get());
                Ok(Joined::Created(Json(ticket.into()), path))
            }
            Ok(JoinOutcome::Existing(ticket)) => Ok(Joined::Existing(Json(ticket.into()))),
            Err(unserved) => Err(unserved.into()),
        }
    }

    /// Get a queue ticket
    ///
    /// Its state and position. Only for the ticket's owner (its `Client-Secret`, or the
    /// token's buyer): anyone else is answered 404, as for a ticket that does not exist.
    #[oai(
        path = "/api/queue/:id",
        method = "get",
        operation_id = "getTicket",
        transform = "identified"
    )]
    async fn get_ticket(
        &self,
        owner: Owner,
        /// The ticket's id.
        id: Path<i64>,
    ) -> Result<TicketFound, Problems<GetTicketProblems>> {
        let ticket = owned_ticket(&self.state, TicketId::new(id.0), &owner.0).await?;
        Ok(TicketFound::Ok(Json(ticket.into())))
    }

    /// Leave the queue
    ///
    /// A waiting or admitted ticket becomes `left` (an admission gives its place to the next
    /// in line). A ticket already done is answered as it is.
    #[oai(
        path = "/api/queue/:id",
        method = "delete",
        operation_id = "leaveQueue",
        transform = "identified"
    )]
    async fn leave_queue(
        &self,
        owner: Owner,
        /// The ticket's id.
        id: Path<i64>,
    ) -> Result<TicketLeft, Problems<LeaveQueueProblems>> {
        let ticket =
            queue::leave_queue(&self.state.db, TicketId::new(id.0), owner.0.access()).await?;
        Ok(TicketLeft::Ok(Json(ticket.into())))
    }

    /// Follow a queue ticket live (Server-Sent Events)
    ///
    /// For a waiting-room page: `event: ticket` at once, then on every change of its state or
    /// position. Only for the ticket's owner (404 otherwise). A client that already has
    /// `STREAM_MAX_PER_CLIENT` streams open is answered 429 `rate_limited`.
    #[oai(
        path = "/api/queue/:id/stream",
        method = "get",
        operation_id = "streamTicket",
        transform = "identified"
    )]
    async fn stream_ticket(
        &self,
        owner: Owner,
        /// The ticket's id.
        id: Path<i64>,
        req: &Request,
    ) -> Result<TicketStream, Problems<StreamTicketProblems>> {
        let state = &self.state;
        let client = match owner.0.buyer() {
            Some(buyer) => Some(ClientKey::Buyer(buyer.clone())),
            None => ClientKey::of(req, &state.trusted_proxies),
        };
        let client_slot = match client {
            Some(key) => Some(state.client_streams.reserve(key).ok_or_else(|| {
                ApiError::new(ProblemCode::RateLimited, crate::error::TOO_MANY_STREAMS)
            })?),
            None => None,
        };
        let first = owned_ticket(state, TicketId::new(id.0), &owner.0).await?;
        let client_gone = crate::connections::client_gone(req);
        let tickets = state.ticket_hub.follow(first, client_gone);
        let tickets = futures_util::StreamExt::map(tickets, move |ticket| {
            let _held = &client_slot;
            Ticket::from(ticket)
        });
        Ok(TicketStream::Ok(
            EventStream::new(Box::pin(tickets) as BoxStream<'static, Ticket>)
                .keep_alive(KEEP_ALIVE)
                .to_event(|t| Event::message(t.to_json_string()).event_type("ticket")),
        ))
    }
}
