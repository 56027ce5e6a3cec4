//! Talking to an API process over HTTP: a [`Client`] with one short helper per operation, and
//! the [`Response`] every helper returns.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Process};

/// An HTTP client for one API process; cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct Client {
    pub address: String,
    pub http: reqwest::Client,
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    /// Every header of the answer.
    pub headers: reqwest::header::HeaderMap,
}

impl Response {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A header's value, if present and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the answer says it is a stored one, replayed (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

impl Client {
    pub fn new(server: &Process) -> Self {
        Self {
            address: format!("http://{}", server.addr.clone().expect("server addr")),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_response(req.send().await.expect("request failed")).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(reqwest::Method::GET, path, None).await
    }

    /// The process's `/metrics` page (Prometheus text). Anything but a 200 fails the test:
    /// an error page read as metrics would make every value 0.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("metrics");
        let status = r.status();
        let text = r.text().await.expect("metrics text");
        assert_eq!(status, 200, "/metrics answered {status}: {text}");
        text
    }

    /// A counter or gauge from `/metrics`, summed over its labels (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_in(&self.metrics_text().await, name)
    }

    /// An operator's call to `/api/admin/*`, with the admin token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_response(req.send().await.expect("admin request")).await
    }

    pub async fn create_product(&self, stock: i64) -> i64 {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/api/admin/products",
                Some(json!({"name": "Test product", "price": "10.50", "stock": stock})),
            )
            .await;
        assert_eq!(r.status, 201, "create product: {}", r.body);
        r.body["id"].as_i64().expect("product id")
    }

    pub async fn hold(&self, product_id: i64, qty: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/holds",
            Some(json!({"product_id": product_id, "qty": qty})),
        )
        .await
    }

    /// `POST /api/holds` with an `Idempotency-Key`.
    pub async fn hold_with_key(&self, product_id: i64, qty: i64, key: &str) -> Response {
        self.post_with_key(
            "/api/holds",
            key,
            &json!({"product_id": product_id, "qty": qty}),
        )
        .await
    }

    /// `POST /api/orders` with an `Idempotency-Key`.
    pub async fn order_with_key(&self, hold_id: i64, key: &str) -> Response {
        self.post_with_key("/api/orders", key, &json!({ "hold_id": hold_id }))
            .await
    }

    /// A JSON `POST` to `path` carrying `Idempotency-Key: key`.
    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> Response {
        let r = self
            .http
            .post(format!("{}{path}", self.address))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("request failed");
        into_response(r).await
    }

    pub async fn release(&self, hold_id: i64) -> Response {
        self.request(
            reqwest::Method::DELETE,
            &format!("/api/holds/{hold_id}"),
            None,
        )
        .await
    }

    pub async fn order(&self, hold_id: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/orders",
            Some(json!({ "hold_id": hold_id })),
        )
        .await
    }

    pub async fn webhook(&self, body: Value) -> Response {
        self.request(reqwest::Method::POST, "/api/payments/webhook", Some(body))
            .await
    }

    /// A webhook signed the way a gateway using the Standard Webhooks library signs it,
    /// `age_secs` seconds ago.
    pub async fn signed_webhook(&self, secret: &str, body: &Value, age_secs: i64) -> Response {
        let raw = body.to_string();
        let ts = now_unix() - age_secs;
        let id = format!("msg_{:x}", rand::random::<u64>());
        let signature = standardwebhooks::Webhook::new(secret)
            .expect("secret")
            .sign(&id, ts, raw.as_bytes())
            .expect("sign");
        self.raw_webhook(
            &raw,
            &[
                ("webhook-id", id),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signature),
            ],
        )
        .await
    }

    /// A webhook with the given raw body and headers, exactly as given.
    pub async fn raw_webhook(&self, raw: &str, headers: &[(&str, String)]) -> Response {
        let mut req = self
            .http
            .post(format!("{}/api/payments/webhook", self.address))
            .header("content-type", "application/json")
            .body(raw.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        into_response(req.send().await.expect("webhook")).await
    }

    /// The current stock and available stock of a product.
    pub async fn stock(&self, product_id: i64) -> (i64, i64) {
        let r = self.get(&format!("/api/products/{product_id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        (
            r.body["stock"].as_i64().expect("stock"),
            r.body["available_stock"].as_i64().expect("available_stock"),
        )
    }

    pub async fn available(&self, product_id: i64) -> i64 {
        let r = self.get(&format!("/api/products/{product_id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["available_stock"].as_i64().expect("available_stock")
    }

    /// Waits until none of `holds` reports `active`: a test letting holds run out waits for the
    /// moment the API says they have, not for a time guessed from `HOLD_TTL_SECONDS`. A hold
    /// never becomes active again, so each is asked about until it is not, then never again.
    pub async fn until_no_hold_active(&self, holds: &[i64], within: Duration) {
        let deadline = std::time::Instant::now() + within;
        let mut left = holds;
        while let Some((&hold, rest)) = left.split_first() {
            let r = self.get(&format!("/api/holds/{hold}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            if r.body["status"] == "active" {
                assert!(
                    std::time::Instant::now() < deadline,
                    "hold {hold} still active after {within:?}: {}",
                    r.body
                );
                tokio::time::sleep(crate::wait::POLL).await;
            } else {
                left = rest;
            }
        }
    }
}

pub async fn into_response(r: reqwest::Response) -> Response {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Response {
        status,
        content_type,
        body,
        headers,
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A counter or gauge in a `/metrics` page, summed over its labels (0 when absent), so that
/// several values can be read from one rendering.
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
