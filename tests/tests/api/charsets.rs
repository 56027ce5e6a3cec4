//! Text a client sends is stored and answered back exactly, whatever the MariaDB server's
//! default character set. A server whose default is `latin1` (MariaDB before 11.6 without a
//! distribution's configuration) made the tables `latin1`: a product named with an emoji was a
//! 500, and a keyed answer naming a buyer outside latin1 could not be written down.

use flash_sale_tests::{AppOptions, Response, TestApp, servers::ScratchMariaDb};
use serde_json::{Value, json};

const NAME: &str = "T恤 🎉 Ünïcödé";
const BUYER: &str = "Jürgen 🎉 顾客";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_latin1_server_names_and_keyed_answers_keep_every_character() {
    let server = ScratchMariaDb::start(&[
        "--character-set-server=latin1",
        "--collation-server=latin1_swedish_ci",
    ])
    .await;
    let app = TestApp::spawn_on(&server.base_url(), AppOptions::default()).await;

    let created = app
        .client
        .admin(
            reqwest::Method::POST,
            "/api/admin/products",
            Some(json!({"name": NAME, "price": "9.99", "stock": 10, "per_buyer_limit": 2})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["name"], NAME);
    let product = created.body["id"].as_i64().expect("product id");
    let read = app.client.get(&format!("/api/products/{product}")).await;
    assert_eq!(read.body["name"], NAME, "the name read back");

    // A keyed hold and a keyed order for that buyer: the first answers name the buyer, and
    // each replay is the same answer.
    let body = json!({"product_id": product, "qty": 2, "buyer_id": BUYER});
    let hold = keyed_twice(&app, "/api/holds", "utf8-hold", &body).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    assert_eq!(hold.body["buyer_id"], BUYER);

    let hold_id = hold.body["hold_id"].as_i64().expect("hold id");
    let order = keyed_twice(
        &app,
        "/api/orders",
        "utf8-order",
        &json!({ "hold_id": hold_id }),
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["buyer_id"], BUYER);

    // A refusal that names the buyer's allowance is stored and replayed too.
    let more = json!({"product_id": product, "qty": 1, "buyer_id": BUYER});
    let refused = keyed_twice(&app, "/api/holds", "utf8-refused", &more).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
}

/// A keyed POST sent twice: the first answer, after checking that the second replays it.
async fn keyed_twice(app: &TestApp, path: &str, key: &str, body: &Value) -> Response {
    let first = app.client.post_with_key(path, key, body).await;
    let again = app.client.post_with_key(path, key, body).await;
    assert_eq!(again.status, first.status, "{}", again.body);
    assert_eq!(again.body, first.body, "the replay is the first answer");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    first
}
