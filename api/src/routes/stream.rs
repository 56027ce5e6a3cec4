//! `GET /api/products/{id}/stream`: a product's live stock as Server-Sent Events, served by the
//! process's [`crate::stream::StockHub`].

use std::{sync::Arc, time::Duration};

use entity::types::ProductId;
use futures_util::stream::BoxStream;
use poem::{Request, web::sse::Event};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Path,
    payload::EventStream,
    types::{Example, ToJSON},
};

use super::{ApiTags, problems};
use crate::{
    AppState,
    client_addr::ClientKey,
    error::{ApiError, ProblemCode, Problems},
    stream::Level,
};

/// Comment lines this often keep idle streams open through proxies (the contract: at least
/// every 15 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The data of one `stock` event.
#[derive(Debug, Object)]
#[oai(example)]
pub struct StockLevel {
    /// The product's id.
    pub id: i64,
    /// Units on hand, not yet sold.
    #[oai(validator(minimum(value = "0")))]
    pub stock: i32,
    /// What can still be held (expired holds never count).
    #[oai(validator(minimum(value = "0")))]
    pub available_stock: i32,
}

impl Example for StockLevel {
    fn example() -> Self {
        Self {
            id: 1,
            stock: 100,
            available_stock: 98,
        }
    }
}

impl From<Level> for StockLevel {
    fn from(l: Level) -> Self {
        Self {
            id: l.id.get(),
            stock: l.stock,
            available_stock: l.available_stock,
        }
    }
}

#[derive(ApiResponse)]
pub enum StockStream {
    /// `text/event-stream`: at once one `event: stock` whose `data` is the product's
    /// `{id, stock, available_stock}`, then one more each time either number changes (within
    /// about `STOCK_STREAM_INTERVAL_MS` of the change's commit), and a `:` comment line at least
    /// every 15 s. The stream ends when the server shuts down; `EventSource` reconnects by
    /// itself.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, StockLevel>>),
}

problems!(StreamStockProblems = "streamStock": [
    MalformedRequest, ProductNotFound, RateLimited, Internal, Unavailable,
]);

pub struct StreamApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Products")]
impl StreamApi {
    /// Follow a product's stock live (Server-Sent Events)
    ///
    /// For a stock bar that thousands of browsers watch: `new EventSource(url)` and listen for
    /// `stock` events. Each API process reads a streamed product's stock once per
    /// `STOCK_STREAM_INTERVAL_MS`, however many listeners it has, and sends only changes. An
    /// unknown product answers 404 `product_not_found` before any event; a client that already
    /// has `STREAM_MAX_PER_CLIENT` streams open (8 by default) is answered 429 `rate_limited`
    /// with `Retry-After`, and a process already serving `STOCK_STREAM_MAX_CLIENTS` streams
    /// answers 503 `unavailable` with `Retry-After`.
    #[oai(
        path = "/api/products/:id/stream",
        method = "get",
        operation_id = "streamStock"
    )]
    async fn stream_stock(
        &self,
        /// The product's id.
        id: Path<i64>,
        req: &Request,
    ) -> Result<StockStream, Problems<StreamStockProblems>> {
        let state = &self.state;
        // The client's own count first: a client at its limit takes no place of the process's. A
        // signed-in buyer counts as itself, wherever it connects from.
        let client = match crate::buyers::signed_in(state, req) {
            Some(buyer) => Some(ClientKey::Buyer(buyer)),
            None => ClientKey::of(req, &state.trusted_proxies),
        };
        let client_slot = match client {
            Some(key) => Some(state.client_streams.reserve(key).ok_or_else(|| {
                ApiError::new(ProblemCode::RateLimited, crate::error::TOO_MANY_STREAMS)
            })?),
            None => None,
        };
        let hub = &state.stock_hub;
        // Taken before the first read, so a full process refuses without touching the database.
        let slot = hub.reserve().ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unavailable,
                "this server has as many open stock streams as it serves; retry shortly",
            )
        })?;
        // The first event: a read that started after the request arrived (shared with
        // concurrent GETs and other new listeners), and 404 before any event.
        let first = self
            .state
            .product_reads
            .product_view(ProductId::new(id.0))
            .await?;
        let client_gone = crate::connections::client_gone(req);
        let levels = hub.follow(slot, Level::from(&first), client_gone);
        // The client's place goes with its stream.
        let levels = futures_util::StreamExt::map(levels, move |level| {
            let _held = &client_slot;
            StockLevel::from(level)
        });
        Ok(StockStream::Ok(
            EventStream::new(Box::pin(levels) as BoxStream<'static, StockLevel>)
                .keep_alive(KEEP_ALIVE)
                .to_event(|level| Event::message(level.to_json_string()).event_type("stock")),
        ))
    }
}
