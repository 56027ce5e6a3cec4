//! CORS as the contract says: browsers on the origins in `CORS_ALLOWED_ORIGINS` (or any, with
//! `*`) get `Access-Control-Allow-Origin` on preflights and answers, and
//! `Access-Control-Expose-Headers` naming the headers a client reads; a request from any other
//! origin is answered exactly as one without `Origin` (no CORS headers, never refused), and the
//! browser enforces.

use std::sync::Arc;

use crate::error::ApiError;

use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response,
    http::{HeaderValue, header},
    middleware::Cors,
};

/// The answer headers a browser's script may read.
pub const EXPOSED: &[&str] = &[
    "X-Request-Id",
    "Location",
    "Idempotent-Replayed",
    "Retry-After",
];

/// The request headers a browser may send.
const ALLOWED: &[&str] = &[
    "Content-Type",
    "Authorization",
    "Idempotency-Key",
    "X-Request-Id",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

#[derive(Clone)]
pub struct CorsPolicy {
    /// `None`: any origin (`*`).
    origins: Option<Arc<Vec<String>>>,
    middleware: Arc<Cors>,
}

impl CorsPolicy {
    /// From `CORS_ALLOWED_ORIGINS`: `*`, or comma-separated origins.
    pub fn new(setting: &str) -> Self {
        let origins = (setting.trim() != "*").then(|| {
            Arc::new(
                setting
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )
        });
        // Only listed origins reach this middleware (see `cors`), so it may allow any.
        let middleware = Cors::new()
            .allow_methods(["GET", "POST", "DELETE", "OPTIONS"])
            .allow_headers(ALLOWED.iter().copied())
            .expose_headers(EXPOSED.iter().copied())
            .max_age(600);
        Self {
            origins,
            middleware: Arc::new(middleware),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins
            .as_ref()
            .is_none_or(|list| list.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    }
}

/// The CORS layer, present only when `CORS_ALLOWED_ORIGINS` is set.
pub async fn cors<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    policy: CorsPolicy,
) -> poem::Result<Response> {
    let listed = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(|o| policy.allows(o));
    let mut resp = if listed == Some(true) {
        // A preflight asking for a method or header no operation takes is refused here.
        // Boxed: a second inline call of the inner endpoint would double every request's
        // future (each call site is a slot of its own), listed origin or not.
        match Box::pin(policy.middleware.transform(ep).call(req)).await {
            Ok(resp) => resp.into_response(),
            Err(e) => ApiError::from_request_error(e, |_| None).into_response(),
        }
    } else {
        if listed.is_some() {
            // Any other origin: answered as if it had sent none.
            req.headers_mut().remove(header::ORIGIN);
        }
        crate::middleware::boxed_call(&*ep, req).await?
    };
    // The answer depends on Origin: caches must keep the CORS and non-CORS answers apart.
    let varies = resp.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("origin"))
    });
    if !varies {
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(resp)
}
