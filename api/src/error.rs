//! Every error answer is RFC 9457 problem+json, and this module is the one place where domain
//! errors and request-parsing failures become HTTP statuses and problem codes.

use std::{
    collections::HashSet,
    marker::PhantomData,
    sync::{Mutex, OnceLock},
};

use chrono::{DateTime, Utc};
use entity::DomainError;

use crate::states::TicketState;
use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Enum, Object,
    error::{AuthorizationError, ContentTypeError, ParseParamError, ParsePathError},
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{ToJSON, Type},
};

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The header that marks a replayed answer (see `crate::idempotency`).
pub const REPLAYED: &str = "idempotent-replayed";

/// The answer's `detail` to a client over `STREAM_MAX_PER_CLIENT`.
pub const TOO_MANY_STREAMS: &str =
    "this client has as many open event streams as it may; close one first";

/// Declares every problem code once, with its status, what it means (for the document's
/// response descriptions) and an example `detail`: the enum and its tables come from this one
/// list, so they cannot drift apart.
macro_rules! problem_codes {
    ($($variant:ident = ($code:literal, $status:ident, $meaning:expr, $example:expr $(,)?)),* $(,)?) => {
        /// What went wrong, as a stable machine-readable code: branch on this. Each code always
        /// comes with the same HTTP status. New codes may be added; none is renamed or removed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum)]
        #[oai(rename_all = "snake_case")]
        pub enum ProblemCode {
            $($variant),*
        }

        impl ProblemCode {
            /// Every code, in the order of the contract's table.
            pub const ALL: &[ProblemCode] = &[$(Self::$variant),*];

            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status),*
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code),*
                }
            }

            /// When this code is answered, for the document's response descriptions.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning),*
                }
            }

            /// The `detail` of this code's example.
            fn example_detail(self) -> &'static str {
                match self {
                    $(Self::$variant => $example),*
                }
            }
        }
    };
}

problem_codes! {
    MalformedRequest = ("malformed_request", BAD_REQUEST,
        "the body is not JSON, a required field is missing or null, or a field or \
         parameter has the wrong type; `errors` names it",
        "qty: missing field"),
    UnsupportedMediaType = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE,
        "a body sent without `Content-Type: application/json`",
        "the body must be sent as application/json"),
    ValidationError = ("validation_error", UNPROCESSABLE_ENTITY,
        "a well-typed value out of its range (see the schema's limits); `errors` names it",
        "qty: must be between 1 and 10"),
    HoldMismatch = ("hold_mismatch", UNPROCESSABLE_ENTITY,
        "the webhook's `hold_id`, `product_id` or `quantity` differs from its hold",
        "hold 1 is for 2 units, not 3"),
    AmountMismatch = ("amount_mismatch", UNPROCESSABLE_ENTITY,
        "the webhook's `amount` is not the order's `total_price`",
        "the order's total is 199.98"),
    ProductNotFound = ("product_not_found", NOT_FOUND,
        "no product has this id",
        "product 1 does not exist"),
    HoldNotFound = ("hold_not_found", NOT_FOUND,
        "no hold has this id, or it is not the caller's (its `Client-Secret` or token)",
        "hold 1 does not exist"),
    OrderNotFound = ("order_not_found", NOT_FOUND,
        "no order has this id (and no `hold_id` was sent to make it), or it is not the \
         caller's",
        "order 1 does not exist"),
    TicketNotFound = ("ticket_not_found", NOT_FOUND,
        "no queue ticket has this id, or it is not the caller's (its `Client-Secret` or token)",
        "ticket 1 does not exist"),
    NotFound = ("not_found", NOT_FOUND,
        "the admin routes are off (`ADMIN_TOKEN` is not set)",
        "no such route"),
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED,
        "the path exists, the method does not",
        "method not allowed"),
    InsufficientStock = ("insufficient_stock", CONFLICT,
        "the product cannot cover `qty` now; `available` says how many can",
        "only 3 available"),
    BuyerLimitExceeded = ("buyer_limit_exceeded", CONFLICT,
        "the hold would take its buyer over the product's `per_buyer_limit`; \
         `remaining` says how many more units this buyer may hold",
        "this buyer may hold only 1 more"),
    BuyerIdRequired = ("buyer_id_required", UNPROCESSABLE_ENTITY,
        "the product has a `per_buyer_limit`: the hold must name `buyer_id`",
        "buyer_id: this product limits units per buyer"),
    SaleNotStarted = ("sale_not_started", CONFLICT,
        "the product's sale has not started; `sale_starts_at` says when it does",
        "the sale starts at 2026-12-01T15:30:00Z"),
    SaleEnded = ("sale_ended", CONFLICT,
        "the product's sale has ended",
        "the sale has ended"),
    QueueClosed = ("queue_closed", CONFLICT,
        "the product's queue admits no one any more: the sale ended or the stock ran out",
        "the queue of product 1 is closed"),
    NoQueue = ("no_queue", CONFLICT,
        "the product has `open` admission: anyone may hold it, there is no queue to join",
        "product 1 has no queue: anyone may hold it"),
    AdmissionRequired = ("admission_required", FORBIDDEN,
        "the product admits buyers through its queue: a hold needs the buyer's admitted \
         ticket (`ticket_id` and its `Client-Secret`, or the token's buyer); \
         `ticket_state` and `position` say where a named ticket is",
        "this product admits buyers through its queue: a hold needs an admitted ticket"),
    ExtensionLimit = ("extension_limit", CONFLICT,
        "the hold was extended `HOLD_MAX_EXTENSIONS` times, or an extension cannot take it any \
         later than `HOLD_MAX_LIFETIME_SECONDS` after it was made",
        "hold 1 cannot be extended any further"),
    NoRefundDue = ("no_refund_due", CONFLICT,
        "the order has no refund due",
        "order 1 has no refund due"),
    HoldExpired = ("hold_expired", CONFLICT,
        "the hold's time ran out",
        "hold 1 has expired"),
    HoldReleased = ("hold_released", CONFLICT,
        "the hold was released",
        "hold 1 was released"),
    HoldNotActive = ("hold_not_active", CONFLICT,
        "the hold is consumed, expired or already released",
        "hold 1 is released"),
    IdempotencyKeyInUse = ("idempotency_key_in_use", CONFLICT,
        "a request with this `Idempotency-Key` is still running; retry shortly",
        "a request with this Idempotency-Key is still being processed; retry later"),
    IdempotencyKeyMismatch = ("idempotency_key_mismatch", UNPROCESSABLE_ENTITY,
        "this idempotency key was used with a different body",
        "this idempotency key was used with a different body"),
    InvalidSignature = ("invalid_signature", UNAUTHORIZED,
        "the Standard Webhooks signature is missing, stale or wrong",
        "no valid signature"),
    Unauthorized = ("unauthorized", UNAUTHORIZED,
        "the bearer token is missing, wrong or expired (answered with `WWW-Authenticate`)",
        "invalid admin token"),
    PayloadTooLarge = ("payload_too_large", PAYLOAD_TOO_LARGE,
        "the body is over 64 KiB",
        "request bodies are limited to 65536 bytes"),
    RateLimited = ("rate_limited", TOO_MANY_REQUESTS,
        "this client is over one of its limits (hold requests per second, open event \
         streams); wait `Retry-After` seconds",
        "too many hold requests from this client; retry in 1 s"),
    Unavailable = ("unavailable", SERVICE_UNAVAILABLE,
        "the database cannot serve right now; retry after `Retry-After` seconds",
        "the database cannot serve right now; retry shortly"),
    Internal = ("internal", INTERNAL_SERVER_ERROR,
        "a fault of this service, logged with the request id",
        "internal error; it has been logged"),
}

impl ProblemCode {
    /// A problem as `operation` answers with this code, for its document's examples: the
    /// code's [`example`](Self::example), unless the operation words it its own way.
    pub fn example_in(self, operation: &str) -> Problem {
        match (self, operation) {
            (Self::RateLimited, "streamStock") => {
                ApiError::new(self, TOO_MANY_STREAMS).into_problem()
            }
            _ => self.example(),
        }
    }

    /// A problem as this code is answered, for the document's examples.
    pub fn example(self) -> Problem {
        use ProblemCode::*;
        let detail = self.example_detail();
        let error = ApiError::new(self, detail);
        match self {
            MalformedRequest => ApiError::field(self, "qty", "missing field"),
            ValidationError => ApiError::field(self, "qty", "must be between 1 and 10"),
            InsufficientStock => error.with_available(3),
            BuyerLimitExceeded => error.with_remaining(1),
            BuyerIdRequired => {
                ApiError::field(self, "buyer_id", "this product limits units per buyer")
            }
            SaleNotStarted => error.with_sale_starts_at(
                DateTime::from_timestamp(1_796_139_000, 0).unwrap_or_default(),
            ),
            AdmissionRequired => error.with_ticket(TicketState::Waiting, Some(42)),
            _ => error,
        }
        .into_problem()
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:flash-sale:problem:` followed by `code`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem (the status's reason phrase).
    pub title: String,
    /// The HTTP status, repeated.
    #[oai(validator(minimum(value = "400"), maximum(value = "599")))]
    pub status: i32,
    /// What went wrong in this request, in words.
    pub detail: String,
    // Described by `ProblemCode` itself: a description here would wrap the `$ref` in `allOf`.
    pub code: ProblemCode,
    /// With `insufficient_stock`: how many units can be held now.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "0")))]
    pub available: Option<i32>,
    /// With a per-buyer limit refusal: how many more units this buyer may hold.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "0")))]
    pub remaining: Option<i32>,
    /// With a refusal before a sale opens: when it opens (RFC 3339, UTC).
    #[oai(skip_serializing_if_is_none)]
    pub sale_starts_at: Option<DateTime<Utc>>,
    // With `admission_required`, when the request named a ticket of the caller's: its state
    // (said in the code's description: a description here would wrap the `$ref` in `allOf`).
    #[oai(skip_serializing_if_is_none)]
    pub ticket_state: Option<TicketState>,
    /// With `admission_required`, for a waiting ticket once the line is drawn: how many
    /// waiting tickets are ahead of it.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "0")))]
    pub position: Option<i64>,
    /// With `malformed_request` and `validation_error`, when one field or parameter is to
    /// blame: which, and why.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
    /// With a refused cart (a hold of `lines`): every line that could not be held, with its
    /// own code. `code` and the status are the first such line's.
    #[oai(skip_serializing_if_is_none)]
    pub lines: Option<Vec<LineProblem>>,
}

/// One line of a refused cart.
#[derive(Debug, Clone, Object)]
pub struct LineProblem {
    pub product_id: i64,
    // Described by `ProblemCode` itself.
    pub code: ProblemCode,
    /// With `insufficient_stock`: how many units of this product can be held now.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "0")))]
    pub available: Option<i32>,
    /// With `buyer_limit_exceeded`: how many more units of this product the buyer may hold.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "0")))]
    pub remaining: Option<i32>,
}

/// One field or parameter to blame.
#[derive(Debug, Clone, Object)]
pub struct FieldError {
    /// The field's or parameter's own name: `qty`, `id`, `Idempotency-Key`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        ProblemCode::InsufficientStock.example()
    }
}

/// Why a request body was refused, field by field: made by `crate::types`' body parsing,
/// carried inside the `poem::Error` to [`ApiError::from_request_error`], which turns it into
/// the problem.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    pub code: ProblemCode,
    /// The field to blame (`qty`, `items[0].id`), or none when the whole body is wrong.
    pub field: Option<String>,
    pub message: String,
}

impl poem::error::ResponseError for BodyError {
    fn status(&self) -> StatusCode {
        self.code.status()
    }
}

/// An error answer: a problem whose status follows from its code; `replayed` when it is the
/// stored outcome of an earlier request with the same `Idempotency-Key` (then it says so in
/// `Idempotent-Replayed: true`).
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>, bool);

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        let status = code.status();
        Self(
            Box::new(Problem {
                kind: format!("urn:flash-sale:problem:{}", code.as_str()),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: i32::from(status.as_u16()),
                detail: detail.into(),
                code,
                available: None,
                remaining: None,
                sale_starts_at: None,
                ticket_state: None,
                position: None,
                errors: None,
                lines: None,
            }),
            false,
        )
    }

    /// This answer, as the replay of an earlier request's.
    pub fn replayed(mut self) -> Self {
        self.1 = true;
        self
    }

    /// A problem with one field or parameter to blame.
    pub fn field(code: ProblemCode, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(code, format!("{field}: {message}"));
        e.0.errors = Some(vec![FieldError {
            field: field.to_owned(),
            message,
        }]);
        e
    }

    /// 422 `validation_error`: a well-typed `field` out of its range.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::field(ProblemCode::ValidationError, field, message)
    }

    pub fn with_available(mut self, available: i32) -> Self {
        self.0.available = Some(available);
        self
    }

    pub fn with_remaining(mut self, remaining: i32) -> Self {
        self.0.remaining = Some(remaining);
        self
    }

    pub fn with_sale_starts_at(mut self, starts_at: DateTime<Utc>) -> Self {
        self.0.sale_starts_at = Some(starts_at);
        self
    }

    pub fn with_ticket(mut self, state: TicketState, position: Option<i64>) -> Self {
        self.0.ticket_state = Some(state);
        self.0.position = position;
        self
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        self.0.code.status()
    }

    /// The problem's stable `code`.
    pub fn code(&self) -> ProblemCode {
        self.0.code
    }

    /// The problem document this answer carries.
    pub fn into_problem(self) -> Problem {
        *self.0
    }

    /// What poem or poem-openapi refused before a handler ran (body, path, headers, content
    /// type, auth), naming the field or parameter to blame where there is one. `path_param`
    /// gives the document's name of the path parameter poem-openapi numbered.
    pub fn from_request_error(
        err: poem::Error,
        path_param: impl Fn(usize) -> Option<String>,
    ) -> Self {
        if let Some(e) = err.downcast_ref::<BodyError>() {
            return match &e.field {
                Some(field) => Self::field(e.code, field, e.message.clone()),
                None => Self::new(e.code, e.message.clone()),
            };
        }
        if let Some(e) = err.downcast_ref::<ParsePathError>() {
            let name = e
                .name
                .strip_prefix("param")
                .and_then(|n| n.parse().ok())
                .and_then(path_param)
                .unwrap_or_else(|| e.name.to_owned());
            return Self::field(ProblemCode::MalformedRequest, &name, path_reason(&e.reason));
        }
        if let Some(e) = err.downcast_ref::<ParseParamError>() {
            return Self::field(ProblemCode::MalformedRequest, e.name, e.reason.clone());
        }
        if err.is::<ContentTypeError>() {
            return Self::new(
                ProblemCode::UnsupportedMediaType,
                "the body must be sent as application/json",
            );
        }
        if err.is::<AuthorizationError>() {
            return Self::new(
                ProblemCode::Unauthorized,
                "an `Authorization: Bearer` token is required",
            );
        }
        let code = classify_poem_error(&err);
        Self::new(code, err.to_string())
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        e.into_problem()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = Response::builder()
            .status(status)
            .content_type(PROBLEM_JSON)
            .body(self.0.to_json_string());
        if self.1 {
            resp.headers_mut()
                .insert(REPLAYED, poem::http::HeaderValue::from_static("true"));
        }
        resp
    }
}

/// What the batching machinery could not serve: busy or late is a 503, a panic a 500.
impl From<entity::batching::coalesce::Unserved> for ApiError {
    fn from(e: entity::batching::coalesce::Unserved) -> Self {
        use entity::batching::coalesce::Unserved;
        match e {
            Unserved::Failed(e) => e.into(),
            Unserved::Overloaded => {
                tracing::warn!("answering 503: too many requests wait for one product");
                Self::new(
                    ProblemCode::Unavailable,
                    "too many requests are waiting for this product; retry shortly",
                )
            }
            Unserved::Late => {
                tracing::warn!("answering 503: a request waited too long for its batch");
                Self::new(ProblemCode::Unavailable, "the stock is busy; retry shortly")
            }
            Unserved::Panicked(message) => {
                tracing::error!(panic = %message, "internal error");
                Self::new(ProblemCode::Internal, "internal error; it has been logged")
            }
        }
    }
}

/// poem-openapi's reason for a path parameter it could not parse, in the document's words
/// (`failed to parse "integer_int64": invalid digit found in string`).
fn path_reason(reason: &str) -> String {
    if reason.contains("integer_int64") || reason.contains("integer_int32") {
        "must be an integer".to_owned()
    } else {
        reason.to_owned()
    }
}

/// The code for a request poem itself refused, by its status.
pub fn classify_poem_error(err: &poem::Error) -> ProblemCode {
    match err.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ProblemCode::Unauthorized,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemCode::PayloadTooLarge,
        StatusCode::NOT_FOUND => ProblemCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemCode::MethodNotAllowed,
        s if s.is_server_error() => ProblemCode::Internal,
        _ => ProblemCode::MalformedRequest,
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        use ProblemCode::*;
        match err {
            DomainError::ProductNotFound(id) => {
                Self::new(ProductNotFound, format!("product {id} does not exist"))
            }
            DomainError::HoldNotFound(id) => {
                Self::new(HoldNotFound, format!("hold {id} does not exist"))
            }
            DomainError::OrderNotFound(id) => {
                Self::new(OrderNotFound, format!("order {id} does not exist"))
            }
            DomainError::HoldExpired(id) => {
                Self::new(HoldExpired, format!("hold {id} has expired"))
            }
            DomainError::HoldReleased(id) => {
                Self::new(HoldReleased, format!("hold {id} was released"))
            }
            DomainError::HoldMismatch(detail) => Self::new(HoldMismatch, detail),
            DomainError::AmountMismatch { total, .. } => Self::new(
                AmountMismatch,
                format!("the amount is not the order's total, {total}"),
            ),
            DomainError::IdempotencyKeyMismatch => Self::new(
                IdempotencyKeyMismatch,
                "this idempotency key was used with a different body",
            ),
            DomainError::IdempotencyKeyInUse => Self::new(
                IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still being processed; retry later",
            ),
            DomainError::InsufficientStock { available } => {
                Self::new(InsufficientStock, format!("only {available} available"))
                    .with_available(available)
            }
            DomainError::BuyerLimitExceeded { remaining } => Self::new(
                BuyerLimitExceeded,
                format!("this buyer may hold only {remaining} more"),
            )
            .with_remaining(remaining),
            DomainError::BuyerIdRequired => Self::field(
                BuyerIdRequired,
                "buyer_id",
                "this product limits units per buyer",
            ),
            DomainError::SaleNotStarted { starts_at } => Self::new(
                SaleNotStarted,
                format!(
                    "the sale starts at {}",
                    starts_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            )
            .with_sale_starts_at(starts_at),
            DomainError::SaleEnded => Self::new(SaleEnded, "the sale has ended"),
            DomainError::TicketNotFound(id) => {
                Self::new(TicketNotFound, format!("ticket {id} does not exist"))
            }
            DomainError::NoQueue(id) => Self::new(
                NoQueue,
                format!("product {id} has no queue: anyone may hold it"),
            ),
            DomainError::QueueClosed(id) => {
                Self::new(QueueClosed, format!("the queue of product {id} is closed"))
            }
            DomainError::AdmissionRequired { ticket } => {
                let e = Self::new(
                    AdmissionRequired,
                    "this product admits buyers through its queue: a hold needs an admitted ticket",
                );
                match ticket {
                    Some((state, position)) => e.with_ticket(state.into(), position),
                    None => e,
                }
            }
            DomainError::CartRefused(lines) => {
                let problems: Vec<(i64, ApiError)> = lines
                    .into_iter()
                    .map(|l| (l.product_id.get(), Self::from(l.refusal)))
                    .collect();
                let detail = problems
                    .iter()
                    .map(|(product, e)| format!("product {product}: {}", e.0.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                let Some((_, first)) = problems.first() else {
                    return Self::new(Internal, "internal error: a cart refused for no line");
                };
                // The first failing line's own members too, as its code promises them
                // (`insufficient_stock` carries `available`, ...).
                let mut e = Self(first.0.clone(), false);
                e.0.detail = format!("the cart cannot be held, nothing was: {detail}");
                e.0.lines = Some(
                    problems
                        .iter()
                        .map(|(product_id, line)| LineProblem {
                            product_id: *product_id,
                            code: line.code(),
                            available: line.0.available,
                            remaining: line.0.remaining,
                        })
                        .collect(),
                );
                e
            }
            DomainError::ExtensionLimit(id) => Self::new(
                ExtensionLimit,
                format!("hold {id} cannot be extended any further"),
            ),
            DomainError::NoRefundDue(id) => {
                Self::new(NoRefundDue, format!("order {id} has no refund due"))
            }
            DomainError::InvalidProduct { field, message } => Self::validation(field, message),
            DomainError::HoldNotActive { id, status } => {
                Self::new(HoldNotActive, format!("hold {id} is {}", status.as_str()))
            }
            // The database's doing (the entity layer sorted each failure into these): a 503,
            // never a 500.
            e @ (DomainError::Busy(_)
            | DomainError::Contention { .. }
            | DomainError::Unavailable(_)) => {
                tracing::warn!(error = %e, "answering 503");
                let detail = match e {
                    DomainError::Unavailable(_) => {
                        "the database cannot serve right now; retry shortly"
                    }
                    _ => "the stock is busy; retry shortly",
                };
                Self::new(Unavailable, detail)
            }
            DomainError::Invariant(_) | DomainError::Db(_) => {
                tracing::error!(error = %err, "internal error");
                Self::new(Internal, "internal error; it has been logged")
            }
        }
    }
}

/// A problem+json response for errors raised outside the operations (unknown routes and
/// methods, middleware refusals).
pub fn problem_response(code: ProblemCode, detail: impl Into<String>) -> Response {
    ApiError::new(code, detail).into_response()
}

/// The problems one operation can answer: its document lists exactly these, grouped by status.
pub trait ProblemSet {
    /// The operation's `operationId`, to attach an example of each code to its document.
    const OPERATION: &'static str;
    const CODES: &'static [ProblemCode];
    /// Whether the operation takes an `Idempotency-Key`, so its answers may be replays.
    const KEYED: bool = false;
}

/// The error side of an operation's result: any [`ApiError`] at run time, documented as the
/// problems of `S`.
pub struct Problems<S>(pub ApiError, PhantomData<fn() -> S>);

impl<S> From<ApiError> for Problems<S> {
    fn from(e: ApiError) -> Self {
        Self(e, PhantomData)
    }
}

impl<S> From<entity::batching::coalesce::Unserved> for Problems<S> {
    fn from(e: entity::batching::coalesce::Unserved) -> Self {
        ApiError::from(e).into()
    }
}

impl<S> From<DomainError> for Problems<S> {
    fn from(e: DomainError) -> Self {
        ApiError::from(e).into()
    }
}

impl<S> IntoResponse for Problems<S> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// How poem-openapi hands a handler's error to poem: as the finished answer.
impl<S> From<Problems<S>> for poem::Error {
    fn from(p: Problems<S>) -> Self {
        poem::Error::from_response(p.into_response())
    }
}

/// The descriptions the document needs as `&'static str`, made once each.
fn intern(s: String) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(known) = seen.get(s.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// A header an answer may carry, for the document.
pub fn meta_header<T: Type>(name: &str, description: &str) -> MetaHeader {
    MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required: T::IS_REQUIRED,
        deprecated: false,
        schema: T::schema_ref(),
    }
}

pub const RETRY_AFTER_DOC: &str = "Seconds to wait before retrying.";
pub const REPLAYED_DOC: &str = "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` and body.";

impl<S: ProblemSet> ApiResponse for Problems<S> {
    fn meta() -> MetaResponses {
        let mut statuses: Vec<StatusCode> = S::CODES.iter().map(|c| c.status()).collect();
        statuses.sort();
        statuses.dedup();
        let responses = statuses
            .into_iter()
            .map(|status| {
                let codes: Vec<_> = S::CODES.iter().filter(|c| c.status() == status).collect();
                let description = codes
                    .iter()
                    .map(|c| format!("- `{}`: {}", c.as_str(), c.meaning()))
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut headers = Vec::new();
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    headers.push(meta_header::<u32>("Retry-After", RETRY_AFTER_DOC));
                }
                // Refusals made before the key is looked at are never stored, so never replayed.
                if S::KEYED && codes.iter().all(|c| !c.before_the_key()) {
                    headers.push(meta_header::<Option<bool>>(
                        "Idempotent-Replayed",
                        REPLAYED_DOC,
                    ));
                }
                MetaResponse {
                    description: intern(description),
                    status: Some(status.as_u16()),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_JSON,
                        schema: Problem::schema_ref(),
                    }],
                    headers,
                }
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl ProblemCode {
    /// Answered before an idempotency key is looked up (or without one), so never a replay.
    fn before_the_key(self) -> bool {
        use ProblemCode::*;
        matches!(
            self,
            MalformedRequest
                | UnsupportedMediaType
                | PayloadTooLarge
                | RateLimited
                | Unavailable
                | Internal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_written_as_the_document_spells_it() {
        for code in ProblemCode::ALL {
            assert_eq!(
                code.to_json(),
                Some(serde_json::Value::String(code.as_str().to_owned()))
            );
            assert_eq!(code.example().code, *code);
        }
        let mut registry = Registry::new();
        ProblemCode::register(&mut registry);
        let listed = &registry.schemas["ProblemCode"].enum_items;
        assert_eq!(
            listed.len(),
            ProblemCode::ALL.len(),
            "ALL lists every variant"
        );
    }

    #[test]
    fn insufficient_stock_carries_available() {
        let p = ApiError::from(DomainError::InsufficientStock { available: 3 }).into_problem();
        assert_eq!(
            (p.code, p.available, p.status),
            (ProblemCode::InsufficientStock, Some(3), 409)
        );
    }
}
