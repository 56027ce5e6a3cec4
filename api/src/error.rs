//! Every error answer is RFC 9457 problem+json, and this module is the one place where domain
//! errors and request-parsing failures become HTTP statuses.

use entity::StockError;
use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:flash-sale:problem:<code>`).
    #[oai(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// Stable machine-readable code; branch on this.
    pub code: String,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "insufficient_stock",
            "only 3 available",
        )
    }
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:flash-sale:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
        }
    }
}

/// A problem document served as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct ProblemJson(pub Problem);

impl Payload for ProblemJson {
    const CONTENT_TYPE: &'static str = "application/problem+json";

    fn schema_ref() -> MetaSchemaRef {
        Problem::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl IntoResponse for ProblemJson {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self
            .0
            .to_json()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "{}".to_owned());
        Response::builder()
            .status(status)
            .content_type(Self::CONTENT_TYPE)
            .body(body)
    }
}

/// The error answers of every API operation.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "ApiError::from_request_error")]
pub enum ApiError {
    /// `malformed_request`: the body is not JSON, or a field is missing, null or of the wrong type.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// `unauthorized` or `invalid_signature`.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// `product_not_found`, `hold_not_found`, `order_not_found` or `not_found`.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// `insufficient_stock`, `hold_expired`, `hold_released`, `hold_not_active`,
    /// `idempotency_key_in_use` (a request with the same `Idempotency-Key` is still running).
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// `payload_too_large`: bodies over 64 KiB.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// `unsupported_media_type`: a body without `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// `validation_error` (a well-typed value out of range) and the other 422 codes.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// `rate_limited`: too many hold requests from this client (`HOLD_RATE_LIMIT_PER_SECOND`);
    /// the `Retry-After` header says how many seconds to wait.
    #[oai(status = 429)]
    TooManyRequests(ProblemJson),
    /// `internal`: a fault of this service, logged with details.
    #[oai(status = 500)]
    Internal(ProblemJson),
    /// `unavailable`: the database cannot be reached or stayed contended; retry later.
    #[oai(status = 503)]
    Unavailable(ProblemJson),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        let p = ProblemJson(Problem::new(status, code, detail));
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest(p),
            StatusCode::UNAUTHORIZED => Self::Unauthorized(p),
            StatusCode::NOT_FOUND => Self::NotFound(p),
            StatusCode::CONFLICT => Self::Conflict(p),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(p),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(p),
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(p),
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests(p),
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(p),
            _ => Self::Internal(p),
        }
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.problem().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem document this answer carries.
    pub fn into_problem(self) -> Problem {
        self.problem().clone()
    }

    fn problem(&self) -> &Problem {
        match self {
            Self::BadRequest(p)
            | Self::Unauthorized(p)
            | Self::NotFound(p)
            | Self::Conflict(p)
            | Self::PayloadTooLarge(p)
            | Self::UnsupportedMediaType(p)
            | Self::Unprocessable(p)
            | Self::TooManyRequests(p)
            | Self::Internal(p)
            | Self::Unavailable(p) => &p.0,
        }
    }

    /// The problem's stable `code`.
    pub fn code(&self) -> &str {
        &self.problem().code
    }

    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", detail)
    }

    /// What poem-openapi could not parse (body, path, headers, content type, auth).
    fn from_request_error(err: poem::Error) -> Self {
        let (status, code) = classify_poem_error(&err);
        Self::new(status, code, err.to_string())
    }
}

/// The status and code for a request poem itself refused.
pub fn classify_poem_error(err: &poem::Error) -> (StatusCode, &'static str) {
    match err.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        StatusCode::UNAUTHORIZED => (StatusCode::UNAUTHORIZED, "unauthorized"),
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        StatusCode::NOT_FOUND => (StatusCode::NOT_FOUND, "not_found"),
        StatusCode::METHOD_NOT_ALLOWED => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        s if s.is_server_error() => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        _ => (StatusCode::BAD_REQUEST, "malformed_request"),
    }
}

impl From<StockError> for ApiError {
    fn from(err: StockError) -> Self {
        match err {
            StockError::ProductNotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                "product_not_found",
                format!("product {id} does not exist"),
            ),
            StockError::HoldNotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                "hold_not_found",
                format!("hold {id} does not exist"),
            ),
            StockError::OrderNotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                format!("order {id} does not exist"),
            ),
            StockError::HoldExpired(id) => Self::new(
                StatusCode::CONFLICT,
                "hold_expired",
                format!("hold {id} has expired"),
            ),
            StockError::HoldReleased(id) => Self::new(
                StatusCode::CONFLICT,
                "hold_released",
                format!("hold {id} was released"),
            ),
            StockError::HoldMismatch(detail) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "hold_mismatch", detail)
            }
            StockError::IdempotencyKeyMismatch => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this idempotency key was used with a different body",
            ),
            StockError::IdempotencyKeyInUse => Self::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry later",
            ),
            StockError::InsufficientStock { available } => Self::new(
                StatusCode::CONFLICT,
                "insufficient_stock",
                format!("only {available} available"),
            ),
            StockError::HoldNotActive { id, status } => Self::new(
                StatusCode::CONFLICT,
                "hold_not_active",
                format!("hold {id} is {}", status.as_str()),
            ),
            // The database's doing (the entity layer sorted each failure into these): a 503,
            // never a 500.
            e @ (StockError::Busy(_)
            | StockError::Contention { .. }
            | StockError::Unavailable(_)
            | StockError::Overloaded
            | StockError::Abandoned) => {
                tracing::warn!(error = %e, "answering 503");
                let detail = match e {
                    StockError::Unavailable(_) => {
                        "the database cannot serve right now; retry shortly"
                    }
                    StockError::Overloaded => {
                        "too many requests are waiting for this product; retry shortly"
                    }
                    // Nobody reads this one: the client has gone.
                    StockError::Abandoned => "the request was abandoned by its client",
                    _ => "the stock is busy; retry shortly",
                };
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
            StockError::Invariant(_) | StockError::Db(_) | StockError::Panicked(_) => {
                tracing::error!(error = %err, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                )
            }
        }
    }
}

/// A problem+json response for errors raised outside poem-openapi (unknown routes, methods).
pub fn problem_response(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    ProblemJson(Problem::new(status, code, detail)).into_response()
}
