//! How a middleware layer calls the endpoint inside it.

use poem::{Endpoint, IntoResponse, Request, Response};

/// Calls the next endpoint through a box. Each middleware's future holds the future of the
/// endpoint it calls, so unboxed their sizes add up layer by layer, with the request held at
/// several levels, and a future is copied whole whenever it moves (seen in profiles as
/// `memmove`). A box per layer costs an allocation instead.
pub async fn boxed_call<E: Endpoint + ?Sized>(ep: &E, req: Request) -> poem::Result<Response> {
    Box::pin(ep.call(req))
        .await
        .map(IntoResponse::into_response)
}
