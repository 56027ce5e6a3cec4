//! Talking to an API process over HTTP: a [`Client`] with one short helper per operation, and
//! the [`Response`] every helper returns.
//!
//! A client is one buyer, as a frontend is: it keeps the `client_secret` of each hold it was
//! given (its wallet) and sends it as `Client-Secret` with every later request about that hold
//! or its order, or sends its buyer token (`BUYER_AUTH=jwt`). [`Client::stranger`] is another
//! buyer on the same API, who was given nothing. Webhooks are signed as the gateway signs them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Process};

/// An HTTP client for one API process; cheap to clone into concurrent tasks (clones share the
/// wallet: they are the same buyer).
#[derive(Clone)]
pub struct Client {
    pub address: String,
    pub http: reqwest::Client,
    /// The gateway's Standard Webhooks secret, when the API has one: [`Client::webhook`] signs.
    pub webhook_secret: Option<String>,
    /// `BUYER_AUTH=jwt`: this buyer's token, sent with every buyer request.
    pub token: Option<String>,
    wallet: Arc<Mutex<Wallet>>,
}

/// The secrets a buyer was given, by hold and by queue ticket, and the orders made from those
/// holds.
#[derive(Default)]
struct Wallet {
    holds: HashMap<i64, String>,
    orders: HashMap<i64, i64>,
    tickets: HashMap<i64, String>,
}

impl Wallet {
    /// The secret that reaches `path` (`/api/holds/{id}...`, `/api/orders/{id}`), or the
    /// `POST /api/orders` of `body`'s hold.
    fn secret_for(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<String> {
        let id_after = |prefix: &str| {
            path.strip_prefix(prefix)?
                .split(['/', '?'])
                .next()?
                .parse::<i64>()
                .ok()
        };
        if let Some(hold) = id_after("/api/holds/") {
            return self.holds.get(&hold).cloned();
        }
        if let Some(order) = id_after("/api/orders/") {
            return self.holds.get(self.orders.get(&order)?).cloned();
        }
        if *method == reqwest::Method::POST && path == "/api/orders" {
            return self.holds.get(&body?["hold_id"].as_i64()?).cloned();
        }
        if let Some(ticket) = id_after("/api/queue/") {
            return self.tickets.get(&ticket).cloned();
        }
        // A hold on a queue product carries its ticket's secret.
        if *method == reqwest::Method::POST && path == "/api/holds" {
            return self.tickets.get(&body?["ticket_id"].as_i64()?).cloned();
        }
        None
    }

    /// Keeps what an answer gave: a hold's secret, an order's hold.
    fn keep(&mut self, path: &str, r: &Response) {
        if !(200..300).contains(&r.status) {
            return;
        }
        if path == "/api/holds"
            && let (Some(hold), Some(secret)) =
                (r.body["hold_id"].as_i64(), r.body["client_secret"].as_str())
        {
            self.holds.insert(hold, secret.to_owned());
        }
        if let (Some(order), Some(hold)) = (r.body["order_id"].as_i64(), r.body["hold_id"].as_i64())
        {
            self.orders.insert(order, hold);
        }
        if path.ends_with("/queue")
            && let (Some(ticket), Some(secret)) = (
                r.body["ticket_id"].as_i64(),
                r.body["client_secret"].as_str(),
            )
        {
            self.tickets.insert(ticket, secret.to_owned());
        }
    }
}

#[derive(Debug)]
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
            webhook_secret: Some(crate::WEBHOOK_SECRET.into()),
            token: None,
            wallet: Arc::default(),
        }
    }

    /// A client of `address` (`http://host:port`) through `http`, for a test that needs its own
    /// connection settings.
    pub fn with_http(address: &str, http: reqwest::Client) -> Self {
        Self {
            address: address.to_owned(),
            http,
            webhook_secret: Some(crate::WEBHOOK_SECRET.into()),
            token: None,
            wallet: Arc::default(),
        }
    }

    /// The same buyer (wallet, token, webhook secret), talking to another API process.
    pub fn on(&self, server: &Process) -> Self {
        Self {
            address: format!("http://{}", server.addr.clone().expect("server addr")),
            ..self.clone()
        }
    }

    /// Another buyer of the same API: no secret in its wallet, no token.
    pub fn stranger(&self) -> Self {
        Self {
            token: None,
            wallet: Arc::default(),
            ..self.clone()
        }
    }

    /// The buyer with this token (`BUYER_AUTH=jwt`), with a wallet of its own.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            wallet: Arc::default(),
            ..self.clone()
        }
    }

    /// The secret this buyer was given for a queue ticket, if it was.
    pub fn ticket_secret_of(&self, ticket_id: i64) -> Option<String> {
        let wallet = self.wallet.lock().unwrap_or_else(|p| p.into_inner());
        wallet.tickets.get(&ticket_id).cloned()
    }

    /// The secret this buyer was given for a hold, if it was.
    pub fn secret_of(&self, hold_id: i64) -> Option<String> {
        let wallet = self.wallet.lock().unwrap_or_else(|p| p.into_inner());
        wallet.holds.get(&hold_id).cloned()
    }

    /// A request of this buyer: its token, and the secret of the hold or order it is about.
    pub fn buyer_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let secret = {
            let wallet = self.wallet.lock().unwrap_or_else(|p| p.into_inner());
            wallet.secret_for(&method, path, body)
        };
        let mut req = self.http.request(method, format!("{}{path}", self.address));
        if let Some(secret) = secret {
            req = req.header("client-secret", secret);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req
    }

    /// Sends a request built by [`Client::buyer_request`] and keeps what its answer gave.
    pub async fn send(&self, path: &str, req: reqwest::RequestBuilder) -> Response {
        self.try_send(path, req).await.expect("request failed")
    }

    /// [`Client::send`] for a test that expects some requests to get no answer.
    pub async fn try_send(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Response, reqwest::Error> {
        let r = into_response(req.send().await?).await;
        self.wallet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep(path, &r);
        Ok(r)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let req = self.buyer_request(method, path, body.as_ref());
        self.send(path, req).await
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

    /// Waits until `n` calls wait in the API's `batcher` (`holds`, `product_reads`,
    /// `key_lookups`), by its `batch_calls_waiting` gauge: from then on they are queued, ahead
    /// of any request sent after.
    pub async fn until_waiting(&self, batcher: &str, n: usize) {
        let gauge = format!("batch_calls_waiting{{batcher=\"{batcher}\"}}");
        crate::eventually(&format!("{n} calls waiting in {batcher}"), Duration::from_secs(10), || {
            let gauge = gauge.clone();
            async move { (metric_in(&self.metrics_text().await, &gauge) >= n as f64).then_some(()) }
        })
        .await;
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

    /// A product with queue admission; `opens_in`: its sale starts that long from now (none:
    /// on sale at once).
    pub async fn create_queue_product(&self, stock: i64, opens_in: Option<Duration>) -> i64 {
        let mut body = json!({"name": "Queued product", "price": "10.50", "stock": stock,
            "admission": "queue"});
        if let Some(after) = opens_in {
            let at = chrono::Utc::now() + chrono::Duration::from_std(after).expect("a duration");
            body["sale_starts_at"] = json!(at.to_rfc3339());
        }
        let r = self
            .admin(reqwest::Method::POST, "/api/admin/products", Some(body))
            .await;
        assert_eq!(r.status, 201, "create queue product: {}", r.body);
        r.body["id"].as_i64().expect("product id")
    }

    /// `POST /api/products/{id}/queue` for `buyer` (none with `BUYER_AUTH=jwt`).
    pub async fn join(&self, product_id: i64, buyer: Option<&str>) -> Response {
        let body = match buyer {
            Some(b) => json!({ "buyer_id": b }),
            None => json!({}),
        };
        self.request(
            reqwest::Method::POST,
            &format!("/api/products/{product_id}/queue"),
            Some(body),
        )
        .await
    }

    /// `GET /api/queue/{id}`, with the ticket's secret (or the token).
    pub async fn ticket(&self, ticket_id: i64) -> Response {
        self.get(&format!("/api/queue/{ticket_id}")).await
    }

    /// `DELETE /api/queue/{id}`.
    pub async fn leave(&self, ticket_id: i64) -> Response {
        self.request(
            reqwest::Method::DELETE,
            &format!("/api/queue/{ticket_id}"),
            None,
        )
        .await
    }

    /// A hold on a queue product with the buyer's ticket (its secret from the wallet).
    pub async fn hold_with_ticket(&self, product_id: i64, qty: i64, ticket_id: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/holds",
            Some(json!({"product_id": product_id, "qty": qty, "ticket_id": ticket_id})),
        )
        .await
    }

    pub async fn hold(&self, product_id: i64, qty: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/holds",
            Some(json!({"product_id": product_id, "qty": qty})),
        )
        .await
    }

    /// A cart: `POST /api/holds` with `lines` of `(product_id, qty)`, and `buyer_id` if given.
    pub async fn cart(&self, lines: &[(i64, i64)], buyer: Option<&str>) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/holds",
            Some(cart_body(lines, buyer)),
        )
        .await
    }

    /// `POST /api/holds/{id}/extend`.
    pub async fn extend(&self, hold_id: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            &format!("/api/holds/{hold_id}/extend"),
            None,
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
        let req = self
            .buyer_request(reqwest::Method::POST, path, Some(body))
            .header("idempotency-key", key);
        self.send(path, req).await
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

    /// A payment webhook as the gateway sends it: signed with the API's secret (unsigned when
    /// the API runs without one, `WEBHOOK_ALLOW_UNSIGNED=true`).
    pub async fn webhook(&self, body: Value) -> Response {
        match &self.webhook_secret {
            Some(secret) => self.signed_webhook(secret, &body, 0).await,
            None => self.raw_webhook(&body.to_string(), &[]).await,
        }
    }

    /// A webhook signed the way a gateway using the Standard Webhooks library signs it,
    /// `age_secs` seconds ago.
    pub async fn signed_webhook(&self, secret: &str, body: &Value, age_secs: i64) -> Response {
        let raw = body.to_string();
        self.raw_webhook(&raw, &signature_headers(secret, &raw, age_secs))
            .await
    }

    /// These exact bytes as a webhook, signed with the API's secret (a body that is not JSON,
    /// or JSON laid out by hand).
    pub async fn signed_raw_webhook(&self, raw: &str) -> Response {
        let secret = self
            .webhook_secret
            .as_deref()
            .expect("the API has a webhook secret");
        self.raw_webhook(raw, &signature_headers(secret, raw, 0))
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

/// The Standard Webhooks headers of `raw` signed with `secret`, `age_secs` seconds ago, made by
/// the reference library as a gateway makes them.
pub fn signature_headers(secret: &str, raw: &str, age_secs: i64) -> Vec<(&'static str, String)> {
    let ts = now_unix() - age_secs;
    let id = format!("msg_{:x}", rand::random::<u64>());
    let signature = standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .sign(&id, ts, raw.as_bytes())
        .expect("sign");
    vec![
        ("webhook-id", id),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature),
    ]
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

/// The body of a cart request.
pub fn cart_body(lines: &[(i64, i64)], buyer: Option<&str>) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(product_id, qty)| json!({"product_id": product_id, "qty": qty}))
        .collect();
    match buyer {
        Some(buyer) => json!({"lines": lines, "buyer_id": buyer}),
        None => json!({"lines": lines}),
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
