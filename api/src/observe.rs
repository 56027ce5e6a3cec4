//! Per-request observability: a request id (taken from `X-Request-Id` when the client sends a
//! sane one, generated otherwise, returned in the response) carried by a tracing span into every
//! log line of the request, Prometheus request count and latency by route template, and
//! `Retry-After` on every 429 and 503.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Instant,
};

use metrics::{Counter, Histogram};
use poem::{
    Endpoint, PathPattern, Request, Response,
    endpoint::BoxEndpoint,
    http::{HeaderValue, Method, header::HeaderName},
};
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The same header as the document spells it.
pub const REQUEST_ID_NAME: &str = "X-Request-Id";

/// Maps poem's matched patterns to the OpenAPI path templates (poem-openapi registers
/// `/api/holds/{id}` as `/api/holds/:param0`).
#[derive(Default)]
pub struct RouteTemplates {
    templates: HashMap<String, String>,
    /// Per template, its methods (for the `Allow` header of a 405).
    methods: Vec<(Vec<String>, String)>,
    /// The request metrics of each routed pattern, method and status, registered with the
    /// recorder once: labelling them anew for every request (the template found, three label
    /// strings made, the recorder's registry searched twice) showed in every profile
    /// (`tests/bench-results/README.md`, "Statements").
    recorded: RwLock<HashMap<String, Vec<RouteMetrics>>>,
}

/// The request count and latency of one pattern, method and status.
struct RouteMetrics {
    method: &'static str,
    status: u16,
    count: Counter,
    latency: Histogram,
}

impl RouteTemplates {
    /// From the OpenAPI document's paths.
    pub fn from_spec(spec: &serde_json::Value) -> Self {
        let paths: Vec<_> = spec["paths"].as_object().into_iter().flatten().collect();
        Self {
            templates: paths
                .iter()
                .map(|(p, _)| (shape(p), (*p).clone()))
                .collect(),
            methods: paths
                .iter()
                .map(|(p, item)| {
                    let segments = p.split('/').map(str::to_owned).collect();
                    let allow = item
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(m, _)| m.to_uppercase())
                        .collect::<Vec<_>>()
                        .join(", ");
                    (segments, allow)
                })
                .collect(),
            recorded: RwLock::default(),
        }
    }

    /// Counts an answer and records its latency, labelled with its route's template.
    fn record(
        &self,
        method: &Method,
        pattern: Option<&str>,
        path: &str,
        status: u16,
        seconds: f64,
    ) {
        let routed = pattern.filter(|p| !p.is_empty());
        let method = method_label(method);
        let known = |by_pattern: &HashMap<String, Vec<RouteMetrics>>| {
            let m = by_pattern
                .get(routed?)?
                .iter()
                .find(|m| m.status == status && m.method == method)?;
            m.count.increment(1);
            m.latency.record(seconds);
            Some(())
        };
        if let Ok(by_pattern) = self.recorded.read()
            && known(&by_pattern).is_some()
        {
            return;
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", self.label(pattern, path)),
            ("status", status.to_string()),
        ];
        let count = metrics::counter!("http_requests_total", &labels);
        let latency = metrics::histogram!("http_request_duration_seconds", &labels);
        count.increment(1);
        latency.record(seconds);
        // Answers given before routing (no pattern) are rare and labelled from the raw path:
        // they are not kept.
        if let (Some(p), Ok(mut by_pattern)) = (routed, self.recorded.write()) {
            by_pattern
                .entry(p.to_owned())
                .or_default()
                .push(RouteMetrics {
                    method,
                    status,
                    count,
                    latency,
                });
        }
    }

    /// The document's template and methods of the route matching a raw path (`/api/holds/12`).
    fn matching(&self, path: &str) -> Option<(String, &str)> {
        let segs: Vec<&str> = path.split('/').collect();
        self.methods.iter().find_map(|(template, allow)| {
            (template.len() == segs.len()
                && template.iter().zip(&segs).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                }))
            .then(|| (template.join("/"), allow.as_str()))
        })
    }

    /// The document's name of the `index`-th parameter of a matched pattern
    /// (`/api/holds/:param0`, 0 → `id`).
    pub fn param_name(&self, pattern: &str, index: usize) -> Option<String> {
        let template = self.templates.get(&shape(pattern))?;
        template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .nth(index)
            .map(str::to_owned)
    }

    /// The documented methods of the route matching a raw path (`/api/holds/12`).
    fn allowed(&self, path: &str) -> Option<&str> {
        self.matching(path).map(|(_, allow)| allow)
    }

    /// The template for a matched pattern: the document's path, else the pattern itself. An
    /// answer given before routing (a 413, a replayed idempotent answer, a 429) has no pattern:
    /// then the document's template that the raw path matches, else `unmatched` (never the raw
    /// path, so labels stay bounded).
    fn label(&self, pattern: Option<&str>, path: &str) -> String {
        match pattern {
            None | Some("") => self
                .matching(path)
                .map_or_else(|| "unmatched".to_owned(), |(template, _)| template),
            Some(p) => self
                .templates
                .get(&shape(p))
                .cloned()
                .unwrap_or_else(|| p.to_owned()),
        }
    }
}

/// The `method` label: HTTP's own methods by name, any other token a client makes up as
/// `other`, so that made-up methods cannot grow the labels (or this process) without bound.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// A path with every parameter, `:x` or `{x}`, written `{}`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with(':') || (seg.starts_with('{') && seg.ends_with('}')) {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The outermost layer. The endpoint inside is boxed (`EndpointExt::boxed`): its call already
/// boxes the rest of the request's future, so this layer calls it directly.
pub async fn observe(
    ep: Arc<BoxEndpoint<'static, Response>>,
    req: Request,
    templates: Arc<RouteTemplates>,
) -> poem::Result<Response> {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
    let started = Instant::now();
    let resp = match ep.call(req).instrument(span).await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    };
    // Here rather than in a layer of its own: one layer fewer for every request.
    let mut resp = with_retry_after(resp);
    // Labelled with the route's template (`/api/holds/{id}`), never the raw path: bounded
    // label values.
    templates.record(
        &method,
        resp.data::<PathPattern>().map(|p| &*p.0),
        &path,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    // RFC 9110: a 405 says which methods the resource has.
    if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = templates.allowed(&path)
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(poem::http::header::ALLOW, v);
    }
    Ok(resp)
}

/// Every 503 (contention, database unavailable, draining) and 429 (a client over one of its
/// limits) tells clients when to come back, so a crowd retrying in a loop spreads out instead
/// of hammering a node that cannot serve. An answer that says it already is left alone.
fn with_retry_after(mut resp: Response) -> Response {
    if matches!(
        resp.status(),
        poem::http::StatusCode::SERVICE_UNAVAILABLE | poem::http::StatusCode::TOO_MANY_REQUESTS
    ) {
        resp.headers_mut()
            .entry(poem::http::header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    resp
}

/// 1 to 128 visible ASCII characters: anything else is replaced, not logged.
fn is_sane_id(v: &str) -> bool {
    (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_labelled_with_the_document_template() {
        let spec = serde_json::json!({"paths": {"/api/holds/{id}": {}, "/api/holds": {}}});
        let t = RouteTemplates::from_spec(&spec);
        assert_eq!(
            t.label(Some("/api/holds/:param0"), "/api/holds/7"),
            "/api/holds/{id}"
        );
        assert_eq!(t.label(Some("/api/holds"), "/api/holds"), "/api/holds");
        assert_eq!(t.label(Some("/metrics"), "/metrics"), "/metrics");
        assert_eq!(t.label(Some(""), "/x"), "unmatched");
        assert_eq!(t.label(None, "/no/such/route"), "unmatched");
        // Answered before routing (a replay, a 413): the template the raw path matches.
        assert_eq!(t.label(None, "/api/holds"), "/api/holds");
        assert_eq!(t.label(None, "/api/holds/12"), "/api/holds/{id}");
        assert_eq!(t.param_name("/api/holds/:param0", 0).as_deref(), Some("id"));
        assert_eq!(t.param_name("/api/holds/:param0", 1), None);
    }

    #[test]
    fn allowed_methods_come_from_the_document() {
        let spec = serde_json::json!({"paths": {"/api/holds/{id}": {"get": {}, "delete": {}}}});
        let t = RouteTemplates::from_spec(&spec);
        let allow = t.allowed("/api/holds/12").unwrap_or_default();
        assert!(allow.contains("GET") && allow.contains("DELETE"), "{allow}");
        assert_eq!(t.allowed("/api/holds"), None);
    }

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        let made_up = Method::from_bytes(b"FROBNICATE").expect("a token");
        assert_eq!(method_label(&made_up), "other");
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(is_sane_id("abc-123"));
        assert!(!is_sane_id(""));
        assert!(!is_sane_id("has space"));
        assert!(!is_sane_id(&"x".repeat(129)));
    }
}
