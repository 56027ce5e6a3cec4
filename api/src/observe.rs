//! Per-request observability: a request id (taken from `X-Request-Id` when the client sends a
//! sane one, generated otherwise, returned in the response) carried by a tracing span into every
//! log line of the request, and Prometheus request count and latency by route template.

use std::{collections::HashMap, sync::Arc, time::Instant};

use poem::{
    Endpoint, IntoResponse, PathPattern, Request, Response,
    http::{HeaderValue, header::HeaderName},
};
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The same header as the document spells it.
pub const REQUEST_ID_NAME: &str = "X-Request-Id";

/// Maps poem's matched patterns to the OpenAPI path templates (poem-openapi registers
/// `/api/holds/{id}` as `/api/holds/:param0`).
#[derive(Debug, Clone, Default)]
pub struct RouteTemplates {
    templates: HashMap<String, String>,
    /// Per template, its methods (for the `Allow` header of a 405).
    methods: Vec<(Vec<String>, String)>,
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

pub async fn observe<E: Endpoint>(
    ep: Arc<E>,
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
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %req.uri().path());
    let started = Instant::now();
    let mut resp = match crate::server::boxed_call(&*ep, req).instrument(span).await {
        Ok(resp) => resp.into_response(),
        Err(err) => err.into_response(),
    };
    // The route's template (`/api/holds/{id}`), never the raw path: bounded label values.
    let route = templates.label(resp.data::<PathPattern>().map(|p| &*p.0), &path);
    let status = resp.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
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
    fn request_ids_are_bounded() {
        assert!(is_sane_id("abc-123"));
        assert!(!is_sane_id(""));
        assert!(!is_sane_id("has space"));
        assert!(!is_sane_id(&"x".repeat(129)));
    }
}
