//! Who is calling a buyer route (`BUYER_AUTH`), established once per request by [`identified`]
//! before anything else of the operation runs (its rate limit, its idempotency key, its
//! handler), and what the OpenAPI document says about it.
//!
//! - `none`: anonymous buyers. A hold's answer gives its `client_secret`; the hold, its order
//!   and their routes answer only a request whose `Client-Secret` header carries it.
//! - `jwt`: every buyer route needs `Authorization: Bearer <JWT>` ([`crate::jwt`]); the buyer is
//!   the token's `sub`, and a hold or order of another buyer does not exist for it.

use std::sync::Arc;

use entity::{rules::ownership::Access, types::BuyerId};
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, RequestBody, Response,
    http::{HeaderValue, header},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaSecurityScheme, Registry},
};

use crate::{
    AppState,
    error::{ApiError, ProblemCode},
    jwt::JwtVerifier,
};

/// The header an anonymous buyer proves ownership with.
pub const CLIENT_SECRET: &str = "client-secret";
/// The document's names of the security schemes.
pub const BUYER_TOKEN_SCHEME: &str = "BuyerToken";
pub const CLIENT_SECRET_SCHEME: &str = "ClientSecret";

/// How this process knows its buyers.
pub enum BuyerAuth {
    Anonymous,
    Jwt(Arc<JwtVerifier>),
}

/// The caller of a buyer route.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `BUYER_AUTH=none`, with the `Client-Secret` it sent, if any.
    Anonymous { secret: Option<String> },
    /// `BUYER_AUTH=jwt`: the token's buyer.
    Buyer(BuyerId),
}

impl Caller {
    /// What the caller brings to reach a hold or an order.
    pub fn access(&self) -> Access<'_> {
        match self {
            Caller::Anonymous { secret } => Access::Secret(secret.as_deref()),
            Caller::Buyer(buyer) => Access::Buyer(buyer),
        }
    }

    /// The token's buyer, when there is one.
    pub fn buyer(&self) -> Option<&BuyerId> {
        match self {
            Caller::Buyer(buyer) => Some(buyer),
            Caller::Anonymous { .. } => None,
        }
    }

    /// Whose idempotency keys this caller's are: a buyer's own, or the anonymous ones.
    pub fn key_owner(&self) -> &str {
        self.buyer().map_or("", BuyerId::as_str)
    }
}

/// The transform of every buyer operation: puts the [`Caller`] in the request's data, or
/// answers 401 when `BUYER_AUTH=jwt` and the request has no valid token.
pub fn identified<E: Endpoint + 'static>(ep: E) -> impl Endpoint<Output = Response> {
    ep.around(identify::<E>)
}

async fn identify<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let Some(state) = req.data::<Arc<AppState>>().cloned() else {
        // `build_app` adds the state to every request: only a wiring mistake gets here.
        tracing::error!("buyer route without the app state");
        return Ok(
            ApiError::new(ProblemCode::Internal, "internal error; it has been logged")
                .into_response(),
        );
    };
    let caller = match &state.buyer_auth {
        BuyerAuth::Anonymous => Caller::Anonymous {
            secret: req
                .headers()
                .get(CLIENT_SECRET)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
        BuyerAuth::Jwt(verifier) => match bearer(&req).map(|t| verifier.verify(t)) {
            Some(Ok(buyer)) => Caller::Buyer(buyer),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "buyer token refused");
                metrics::counter!("buyer_tokens_refused_total").increment(1);
                return Ok(unauthorized("the bearer token is not valid"));
            }
            None => return Ok(unauthorized("an `Authorization: Bearer` token is required")),
        },
    };
    req.set_data(caller);
    crate::middleware::boxed_call(&*ep, req).await
}

/// The buyer a public route's request is signed in as: with `BUYER_AUTH=jwt` and a valid
/// token, its `sub`; otherwise none (a public route needs no token, and a bad one only makes the
/// request anonymous).
pub fn signed_in(state: &AppState, req: &Request) -> Option<BuyerId> {
    match &state.buyer_auth {
        BuyerAuth::Jwt(verifier) => verifier.verify(bearer(req)?).ok(),
        BuyerAuth::Anonymous => None,
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110).
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer` (RFC 6750).
pub fn unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::new(ProblemCode::Unauthorized, detail).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"buyers\""),
    );
    resp
}

/// The caller of an operation that [`identified`] its buyer, as a handler parameter. For the
/// document it is the security of a route that acts on a hold or an order: a buyer token
/// (`jwt`) or the hold's `Client-Secret` (`none`); the document as served keeps the one of this
/// server's `BUYER_AUTH` ([`crate::document`]).
pub struct Owner(pub Caller);

/// The caller of `createHold`: anonymous (`none`), or a buyer token (`jwt`).
pub struct Purchaser(pub Caller);

fn register_schemes(registry: &mut Registry) {
    registry.create_security_scheme(
        BUYER_TOKEN_SCHEME,
        MetaSecurityScheme {
            ty: "http",
            description: Some(
                "With `BUYER_AUTH=jwt`: a JWT from the shop's identity provider; the buyer is its \
                 `sub`. A hold, order or ticket of another buyer answers 404.",
            ),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: Some("JWT"),
            flows: None,
            openid_connect_url: None,
        },
    );
    registry.create_security_scheme(
        CLIENT_SECRET_SCHEME,
        MetaSecurityScheme {
            ty: "apiKey",
            description: Some(
                "With `BUYER_AUTH=none`: the `client_secret` of the hold's answer (for a hold \
                 and its order), or of the join's answer (for a queue ticket). A missing or \
                 wrong secret answers exactly as an id that does not exist (404).",
            ),
            name: Some("Client-Secret"),
            key_in: Some("header"),
            scheme: None,
            bearer_format: None,
            flows: None,
            openid_connect_url: None,
        },
    );
}

fn caller_of(req: &Request) -> poem::Result<Caller> {
    req.data::<Caller>().cloned().ok_or_else(|| {
        // A buyer operation without its `identified` transform: a wiring mistake, loudly.
        tracing::error!("buyer operation without `buyers::identified`");
        poem::Error::from_response(
            ApiError::new(ProblemCode::Internal, "internal error; it has been logged")
                .into_response(),
        )
    })
}

impl<'a> ApiExtractor<'a> for Owner {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        register_schemes(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BUYER_TOKEN_SCHEME, CLIENT_SECRET_SCHEME]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        caller_of(req).map(Self)
    }
}

impl<'a> ApiExtractor<'a> for Purchaser {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        register_schemes(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BUYER_TOKEN_SCHEME]
    }

    /// With `BUYER_AUTH=none` nobody needs a credential to ask for a hold.
    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        caller_of(req).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_never_empty() {
        let req = |v: &str| Request::builder().header(header::AUTHORIZATION, v).finish();
        assert_eq!(bearer(&req("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("Bearer ")), None);
        assert_eq!(bearer(&req("Bearer")), None);
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&Request::builder().finish()), None);
    }
}
