//! Who may do what with `BUYER_AUTH=none` (anonymous buyers): a hold and its order answer only
//! the `Client-Secret` their buyer was given, and to anyone else they do not exist. And the
//! settings an API refuses to start with.

use std::time::Duration;

use flash_sale_tests::{Backend, Client, TestApp, binary, on_both_databases};
use serde_json::{Value, json};

/// The answer about a hold or order that does not exist, with its id replaced: what a stranger
/// must get for an existing one too.
fn shape(r: &flash_sale_tests::Response, id: i64) -> (u16, String, Value) {
    let mut body = r.body.clone();
    if let Some(detail) = body["detail"].as_str() {
        body["detail"] = Value::String(detail.replace(&id.to_string(), "{id}"));
    }
    (r.status, r.content_type.clone(), body)
}

/// Every way a buyer route can be asked about `id` by `c`: read, release and order the hold,
/// read the order.
async fn every_route(c: &Client, hold: i64, order: i64) -> Vec<(u16, String, Value)> {
    vec![
        shape(&c.get(&format!("/api/holds/{hold}")).await, hold),
        shape(&c.release(hold).await, hold),
        shape(&c.order(hold).await, hold),
        shape(&c.get(&format!("/api/orders/{order}")).await, order),
    ]
}

on_both_databases!(
    strangers_reach_no_hold_or_order_however_they_guess,
    a_hold_secret_is_answered_once_and_stored_only_as_its_hash
);

async fn strangers_reach_no_hold_or_order_however_they_guess(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(20).await;
    // The owner: four holds, two of them already orders.
    let mut holds = Vec::new();
    for _ in 0..4 {
        let r = app.hold(product, 1).await;
        assert_eq!(r.status, 201, "{}", r.body);
        holds.push(r.body["hold_id"].as_i64().expect("hold"));
    }
    let mut orders = Vec::new();
    for &h in &holds[..2] {
        orders.push(app.order(h).await.body["order_id"].as_i64().expect("order"));
    }
    // Unknown ids answer this...
    let unknown = every_route(&app.stranger(), 9_999, 9_999).await;
    assert!(
        unknown.iter().all(|(status, ..)| *status == 404),
        "{unknown:?}"
    );

    // ...and so do the owner's, to 40 strangers at once: no secret, a wrong one, an empty
    // one, another hold's. Sequential ids make guessing easy; it must get them nothing.
    let other_secret = app.secret_of(holds[3]).expect("a secret");
    let answers = app
        .all_at_once(40, |c, i| {
            let (hold, order) = (holds[i % 2], orders[i % 2]);
            let secret = match i % 4 {
                0 => None,
                1 => Some("wrong-secret-0123456789".to_owned()),
                2 => Some(String::new()),
                _ => Some(other_secret.clone()),
            };
            async move {
                let stranger = c.stranger();
                let mut got = Vec::new();
                for (method, path, body) in [
                    (reqwest::Method::GET, format!("/api/holds/{hold}"), None),
                    (reqwest::Method::DELETE, format!("/api/holds/{hold}"), None),
                    (
                        reqwest::Method::POST,
                        "/api/orders".to_owned(),
                        Some(json!({"hold_id": hold})),
                    ),
                    (reqwest::Method::GET, format!("/api/orders/{order}"), None),
                ] {
                    let mut req = stranger.buyer_request(method, &path, body.as_ref());
                    if let Some(s) = &secret {
                        req = req.header("client-secret", s);
                    }
                    let id = if path.starts_with("/api/orders/") {
                        order
                    } else {
                        hold
                    };
                    got.push(shape(&stranger.send(&path, req).await, id));
                }
                got
            }
        })
        .await;
    for got in &answers {
        assert_eq!(got, &unknown, "a stranger's answer must be an unknown id's");
    }
    // Nothing changed: the holds are still active, no order was made of the other two.
    assert_eq!(app.available(product).await, 16);
    assert_eq!(app.count("orders", "1 = 1").await, 2);
    for &h in &holds {
        let r = app.get(&format!("/api/holds/{h}")).await;
        assert_eq!(r.status, 200, "the owner reads its hold: {}", r.body);
    }
    // The owner can still do everything.
    assert_eq!(app.release(holds[2]).await.status, 200);
    assert_eq!(app.order(holds[3]).await.status, 201);
    assert_eq!(
        app.get(&format!("/api/orders/{}", orders[0])).await.status,
        200
    );
    app.assert_stock_conserved().await;
}

async fn a_hold_secret_is_answered_once_and_stored_only_as_its_hash(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let made = app.hold(product, 1).await;
    let secret = made.body["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let hold = made.body["hold_id"].as_i64().expect("hold");
    assert_eq!(
        app.get(&format!("/api/holds/{hold}")).await.body["client_secret"],
        Value::Null
    );
    let order = app.order(hold).await;
    assert_eq!(order.status, 201);
    assert!(order.body.get("client_secret").is_none(), "{}", order.body);

    // Keyed: the secret is the replay's too, and a fresh key's is another.
    let body = json!({"product_id": product, "qty": 1});
    let first = app.post_with_key("/api/holds", "own-key-1", &body).await;
    let again = app
        .stranger()
        .post_with_key("/api/holds", "own-key-1", &body)
        .await;
    assert!(again.replayed());
    assert_eq!(again.body["client_secret"], first.body["client_secret"]);
    let other = app.post_with_key("/api/holds", "own-key-2", &body).await;
    assert_ne!(other.body["client_secret"], first.body["client_secret"]);

    // The database holds SHA-256 of each secret, never a secret.
    let conn = app.db.connect().await;
    use sea_orm::ConnectionTrait;
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT secret_hash FROM holds WHERE id = {hold}"),
        ))
        .await
        .expect("holds");
    let stored: String = rows[0].try_get("", "secret_hash").expect("a hash");
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored, expected);
    for secret in [
        &secret,
        &first.body["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned(),
    ] {
        for (table, column) in [
            ("holds", "secret_hash"),
            ("orders", "secret_hash"),
            ("holds", "idem_key"),
            ("idempotency_keys", "outcome"),
        ] {
            let found = app
                .count(table, &format!("{column} LIKE '%{secret}%'"))
                .await;
            assert_eq!(found, 0, "{table}.{column} holds a secret");
        }
    }
}

/// Starts the API with `env` (on a SQLite file of its own) and returns its exit status and
/// what it wrote to stderr, or `None` when it was still running after 20 s (then it is killed).
fn start_with(env: &[(&str, &str)]) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = std::process::Command::new(binary("flash-sale-api"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("db.sqlite").display()
            ),
        )
        .env("LOG_DIR", dir.path().join("logs"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the API");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("stderr");
            return Some((status.success(), err));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Polling for the exit (std's `Child` has no wait with a timeout), not a guessed time.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unsafe_settings_stop_the_api_at_start_naming_the_setting() {
    let secret = flash_sale_tests::WEBHOOK_SECRET;
    let cases: &[(&[(&str, &str)], &str)] = &[
        // Nothing set: webhooks would be anyone's to forge.
        (&[], "WEBHOOK_SECRET"),
        (&[("WEBHOOK_SECRET", "whsec_c2hvcnQ=")], "WEBHOOK_SECRET"),
        (&[("WEBHOOK_SECRET", "not-a-secret")], "WEBHOOK_SECRET"),
        (
            &[("WEBHOOK_SECRET", secret), ("ADMIN_TOKEN", "")],
            "ADMIN_TOKEN",
        ),
        (
            &[("WEBHOOK_SECRET", secret), ("ADMIN_TOKEN", "change-me")],
            "ADMIN_TOKEN",
        ),
        (
            &[("WEBHOOK_SECRET", secret), ("BUYER_AUTH", "jwt")],
            "BUYER_JWT_SECRET",
        ),
        (
            &[
                ("WEBHOOK_SECRET", secret),
                ("BUYER_AUTH", "jwt"),
                ("BUYER_JWT_SECRET", "only-31-bytes-long-not-enough!!"),
            ],
            "BUYER_JWT_SECRET",
        ),
        (
            &[
                ("WEBHOOK_SECRET", secret),
                ("BUYER_AUTH", "jwt"),
                ("BUYER_JWT_PUBLIC_KEYS", "/no/such/keys.pem"),
            ],
            "BUYER_JWT_PUBLIC_KEYS",
        ),
        // A token key with anonymous buyers: tokens would silently not be checked.
        (
            &[
                ("WEBHOOK_SECRET", secret),
                ("BUYER_JWT_SECRET", &"k".repeat(40)),
            ],
            "BUYER_AUTH",
        ),
        (
            &[("WEBHOOK_SECRET", secret), ("BUYER_AUTH", "sometimes")],
            "BUYER_AUTH",
        ),
    ];
    for (env, named) in cases {
        let (ok, stderr) = start_with(env).unwrap_or_else(|| panic!("{env:?}: the API started"));
        assert!(!ok, "{env:?} must stop the API");
        assert!(
            stderr.contains(named),
            "{env:?}: the message must name {named}: {stderr}"
        );
    }
}

/// The one unsafe mode is an explicit opt-in, warned at start and shown on `/metrics`; it is off
/// whenever a secret is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_webhooks_are_an_explicit_opt_in_shown_on_metrics() {
    let unsigned = TestApp::spawn_with(
        Backend::Sqlite,
        flash_sale_tests::AppOptions {
            extra_env: vec![("WEBHOOK_ALLOW_UNSIGNED", "true".into())],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(unsigned.metric("webhook_unsigned_allowed").await, 1.0);
    let product = unsigned.create_product(5).await;
    let hold = unsigned.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = unsigned.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    let body = json!({"idempotency_key": "unsigned-1", "order_id": order, "status": "success"});
    assert_eq!(
        unsigned.raw_webhook(&body.to_string(), &[]).await.status,
        200
    );

    let signed = TestApp::spawn_with(
        Backend::Sqlite,
        flash_sale_tests::AppOptions {
            extra_env: vec![
                ("WEBHOOK_ALLOW_UNSIGNED", "true".into()),
                ("WEBHOOK_SECRET", flash_sale_tests::WEBHOOK_SECRET.into()),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(signed.metric("webhook_unsigned_allowed").await, 0.0);
    let product = signed.create_product(5).await;
    let hold = signed.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = signed.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    let body = json!({"idempotency_key": "unsigned-2", "order_id": order, "status": "success"});
    let r = signed.raw_webhook(&body.to_string(), &[]).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "invalid_signature"),
        "a secret always wins"
    );
}
