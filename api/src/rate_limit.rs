//! Per-client rate limit on `createHold` (`HOLD_RATE_LIMIT_PER_SECOND`, off by default), with
//! `governor`'s keyed GCRA limiter: over the limit, 429 `rate_limited` with `Retry-After`. It is
//! part of the operation's `transform` ([`limited`]), so it follows the operation, not a path.
//! Clients are told apart by their [`ClientKey`].

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use poem::{
    Endpoint, EndpointExt, Request, Response,
    http::{HeaderValue, header},
};

use crate::{
    AppState,
    client_addr::ClientKey,
    error::{ProblemCode, problem_response},
};

pub struct HoldRateLimit {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
}

impl HoldRateLimit {
    /// `per_second` holds per client, with a burst of the same size; `None` when 0.
    pub fn new(per_second: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let limiter = Arc::new(Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate)),
        });
        // Forget idle clients now and then, so the table does not grow without bound.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.limiter.retain_recent();
            }
        });
        Some(limiter)
    }
}

/// The limit, as part of an operation's `transform`; the limiter is the app state's.
pub fn limited<E: Endpoint + 'static>(ep: E) -> impl Endpoint<Output = Response> {
    ep.around(limit::<E>)
}

async fn limit<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    if let Some(state) = req.data::<Arc<AppState>>()
        && let Some(limit) = &state.hold_rate_limit
        && let Some(client) = ClientKey::of(&req, &state.trusted_proxies)
        && let Err(not_until) = limit.limiter.check_key(&client)
    {
        let wait = not_until.wait_time_from(limit.limiter.clock().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = problem_response(
            ProblemCode::RateLimited,
            format!(
                "too many hold requests from this buyer; retry in {} s",
                secs.max(1)
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(resp);
    }
    crate::middleware::boxed_call(&*ep, req).await
}
