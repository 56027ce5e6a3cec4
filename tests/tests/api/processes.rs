//! The binaries as operators run them: migrations and seeding, configuration errors, several
//! API processes on one database, and the indexes the hot queries rely on.

use std::time::Duration;

use flash_sale_tests::{
    AppOptions, Backend, Client, Process, TestApp, TestDb, all_at_once_across, eventually,
    on_both_databases,
};
use sea_orm::{ConnectionTrait, Statement};

on_both_databases!(
    migrate_seed_adds_the_demo_product_once,
    two_api_processes_on_one_database_never_oversell,
    health_readiness_and_documents_are_served
);

async fn migrate_seed_adds_the_demo_product_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("LOG_DIR", db.dir().join("logs").display().to_string()),
    ];
    for _ in 0..2 {
        let mut p = Process::start("flash-sale-api", &["migrate", "--seed"], &env, false);
        assert!(p.wait(Duration::from_secs(60)), "{}", p.output());
    }
    let conn = db.connect().await;
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT id, name, price_cents, stock, available_stock FROM products",
        ))
        .await
        .expect("products");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.try_get::<i64>("", "id").ok(), Some(1));
    assert_eq!(
        row.try_get::<String>("", "name").ok().as_deref(),
        Some("Flash Sale Product")
    );
    assert_eq!(row.try_get::<i64>("", "price_cents").ok(), Some(9999));
    assert_eq!(row.try_get::<i32>("", "stock").ok(), Some(100));
    conn.close().await.ok();

    // The API over that database, not migrating again, serves the demo product.
    let api = Process::start(
        "flash-sale-api",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("BIND_ADDR", "127.0.0.1:0".into()),
            ("AUTO_MIGRATE", "false".into()),
            ("LOG_DIR", db.dir().join("logs").display().to_string()),
            ("WEBHOOK_SECRET", flash_sale_tests::WEBHOOK_SECRET.into()),
        ],
        true,
    );
    let client = Client::new(&api);
    let p = client.get("/api/products/1").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body["price"], "99.99");
    assert_eq!(p.body["available_stock"], 100);
}

async fn two_api_processes_on_one_database_never_oversell(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;
    let second = app.spawn_another_api(&AppOptions::default());
    let clients = [app.client.clone(), app.client.on(&second)];

    let answers = all_at_once_across(&clients, 240, move |c, _| async move {
        c.hold(product, 1).await
    })
    .await;
    assert_eq!(answers.iter().filter(|r| r.status == 201).count(), 100);
    assert!(
        answers
            .iter()
            .filter(|r| r.status != 201)
            .all(|r| r.status == 409 && r.code() == "insufficient_stock")
    );
    assert_eq!(app.available(product).await, 0);
    app.assert_stock_conserved().await;
}

async fn health_readiness_and_documents_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    let spec = app.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    for path in [
        "/api/products/{id}",
        "/api/holds",
        "/api/holds/{id}",
        "/api/admin/products",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    let docs = app
        .http
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap_or_default();
    assert!(
        html.contains("swagger-ui"),
        "the Swagger UI bundle is inlined"
    );
    assert!(
        !html.contains("<script src"),
        "no script loaded from elsewhere"
    );
    assert!(
        !html.contains("<link"),
        "no stylesheet or font loaded from elsewhere"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);

    // The same JSON lines go to a daily file named after the binary and the UTC day.
    let product = app.create_product(1).await;
    assert_eq!(app.hold(product, 1).await.status, 201);
    let file = app.db.dir().join("logs").join(format!(
        "flash-sale-api.log.{}",
        chrono::Utc::now().format("%Y-%m-%d")
    ));
    // The file has a writer of its own: its line may come a moment after stdout's.
    let file = &file;
    let line = eventually(
        "hold.created in the log file",
        Duration::from_secs(10),
        || async move {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["metric"] == "hold.created")
        },
    )
    .await;
    assert!(line["timestamp"].is_string() && line["hold_id"].is_number());
}

#[test]
fn a_bad_setting_stops_the_api_with_a_message_naming_it() {
    for (var, value) in [
        ("BIND_ADDR", "nowhere"),
        ("HOLD_TTL_SECONDS", "abc"),
        ("MAX_HOLD_QTY", "0"),
        ("WEBHOOK_SECRET", "not-a-whsec"),
        ("AUTO_MIGRATE", "maybe"),
    ] {
        let out = std::process::Command::new(flash_sale_tests::binary("flash-sale-api"))
            .env(var, value)
            .env("LOG_DIR", std::env::temp_dir())
            .output()
            .expect("run flash-sale-api");
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(var),
            "{var}: message does not name it: {stderr}"
        );
    }
}

#[test]
fn a_bad_setting_stops_the_worker_with_a_message_naming_it() {
    for (var, value) in [
        ("EXPIRY_BATCH_SIZE", "0"),
        ("WORKER_ADDR", "x"),
        ("EXPIRY_SCHEDULE", "every minute"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(flash_sale_tests::binary("flash-sale-worker"))
            .env(var, value)
            .env("LOG_DIR", dir.path().join("logs"))
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display()),
            )
            .env(
                "WORKER_ADDR",
                if var == "WORKER_ADDR" {
                    value
                } else {
                    "127.0.0.1:0"
                },
            )
            .output()
            .expect("run flash-sale-worker");
        assert!(!out.status.success(), "{var}={value} was accepted");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            text.contains(var),
            "{var}: message does not name it: {text}"
        );
    }
}

/// The hot queries use their indexes on MariaDB (no full table scans).
#[tokio::test]
async fn hot_queries_use_indexes_on_mariadb() {
    let app = TestApp::spawn(Backend::MariaDb).await;
    let product = app.create_product(1000).await;
    for i in 0..20 {
        app.hold(product, 1).await;
        app.hold_with_key(product, 1, &format!("key-{i}")).await;
    }
    let db = app.db.connect().await;
    // Enough stored keys that a scan would cost more than the index (with a handful of rows
    // the optimizer rightly reads the whole table).
    db.execute_unprepared(
        "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, state, outcome, \
           created_at, expires_at) \
         SELECT 'orders', CONCAT('old-', seq), 'f', 'done', '{}', \
           NOW(6), NOW(6) + INTERVAL 1 DAY FROM seq_1_to_5000",
    )
    .await
    .expect("stored keys");
    // Holds and orders of many buyers, for the per-buyer look-up: consumed holds with paid
    // orders, and as many active holds, so that reading the product's rows (or every unexpired
    // hold) instead of the batch's buyers' would show in the row estimates.
    db.execute_unprepared(&format!(
        "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at, \
           buyer_id) \
         SELECT {product}, 1, 'consumed', NOW(6), NOW(6), NOW(6), CONCAT('b', seq) \
         FROM seq_1_to_3000"
    ))
    .await
    .expect("buyers' holds");
    db.execute_unprepared(
        "INSERT INTO orders (hold_id, product_id, quantity, total_cents, status, created_at, \
           updated_at, buyer_id) \
         SELECT id, product_id, 1, 100, 'paid', NOW(6), NOW(6), buyer_id FROM holds \
         WHERE buyer_id IS NOT NULL",
    )
    .await
    .expect("buyers' orders");
    db.execute_unprepared(&format!(
        "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at, \
           buyer_id) \
         SELECT {product}, 1, 'active', NOW(6) + INTERVAL 1 HOUR, NOW(6), NOW(6), \
           CONCAT('a', seq) FROM seq_1_to_3000"
    ))
    .await
    .expect("buyers' active holds");
    // A queue of 5,000 waiting tickets, 50 of which left: a ticket's position counts only the
    // tickets ahead that left, through the index, never the line.
    let queued = app.create_queue_product(10, None).await;
    db.execute_unprepared(&format!(
        "INSERT INTO queue_tickets (product_id, buyer_id, live_buyer, secret_hash, state, \
           early, seq, joined_at, updated_at) \
         SELECT {queued}, CONCAT('q', seq), IF(seq % 100 = 0, NULL, CONCAT('q', seq)), \
           NULL, IF(seq % 100 = 0, 'left', 'waiting'), 0, seq, NOW(6), NOW(6) \
         FROM seq_1_to_5000"
    ))
    .await
    .expect("a long queue");
    db.execute_unprepared("ANALYZE TABLE holds, products, idempotency_keys, orders, queue_tickets")
        .await
        .expect("analyze");
    let per_buyer = format!(
        "SELECT STRAIGHT_JOIN h.buyer_id, h.qty AS units \
           FROM JSON_TABLE('[\"b1\",\"a7\"]', '$[*]' COLUMNS ( \
             b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
           JOIN holds AS h FORCE INDEX (idx_holds_product_buyer) \
             ON h.product_id = {product} AND h.buyer_id = j.b AND h.status = 'active' \
               AND h.expires_at > NOW(6) \
         UNION ALL \
         SELECT STRAIGHT_JOIN o.buyer_id, o.quantity AS units \
           FROM JSON_TABLE('[\"b1\",\"a7\"]', '$[*]' COLUMNS ( \
             b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
           JOIN orders AS o FORCE INDEX (idx_orders_product_buyer) \
             ON o.product_id = {product} AND o.buyer_id = j.b \
               AND o.status IN ('pending', 'paid')"
    );
    let tickets = String::from(
        "SELECT t.id, t.state, t.seq, q.head, \
           CASE WHEN q.drawn AND q.early_count + q.late_count - q.head = q.waiting THEN 0 \
           ELSE (SELECT COUNT(*) FROM queue_tickets l FORCE INDEX (idx_tickets_product_state_seq) \
             WHERE l.product_id = t.product_id AND l.state = 'left' \
               AND l.seq > q.head AND l.seq < t.seq) END AS left_ahead \
         FROM JSON_TABLE('[4990, 4999]', '$[*]' COLUMNS (id BIGINT PATH '$')) AS j \
         JOIN queue_tickets t ON t.id = j.id \
         LEFT JOIN queues q ON q.product_id = t.product_id",
    );
    let queries = [
        // worker sweep
        "SELECT id, product_id, qty FROM holds WHERE status = 'active' AND expires_at <= NOW(6) \
         ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED",
        // reclaim under the product lock
        "SELECT id, product_id, qty FROM holds WHERE status = 'active' AND expires_at <= NOW(6) \
         AND product_id = 1 ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
        // expired part of available_stock
        "SELECT SUM(qty) FROM holds WHERE product_id = 1 AND status = 'active' AND expires_at <= NOW(6)",
        "SELECT * FROM products WHERE id = 1 FOR UPDATE",
        "SELECT * FROM holds WHERE id = 1 FOR UPDATE",
        // payment-timeout sweep, order by hold, webhook key
        "SELECT * FROM orders WHERE status = 'pending' AND created_at <= NOW(6) \
         ORDER BY created_at LIMIT 500 FOR UPDATE SKIP LOCKED",
        "SELECT * FROM orders WHERE hold_id = 1",
        "SELECT * FROM webhook_events WHERE idempotency_key = 'k'",
        // Idempotency-Key look-up (the keys bound as one JSON array): stored answers, and the
        // keys granted holds carry (entity/src/idempotency.rs)
        "SELECT STRAIGHT_JOIN j.k AS idem_key, \
           t.id AS row_id, t.fingerprint AS row_fingerprint, t.created_at AS row_created_at, \
           h.id AS hold_id, h.idem_fingerprint AS hold_fingerprint, h.created_at AS hold_created_at \
         FROM JSON_TABLE('[\"key-1\",\"key-2\"]', '$[*]' COLUMNS ( \
           k VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin PATH '$')) AS j \
         LEFT JOIN idempotency_keys AS t ON t.scope = 'holds' AND t.idem_key = j.k \
         LEFT JOIN holds AS h ON h.idem_key = j.k \
         WHERE t.id IS NOT NULL OR h.id IS NOT NULL",
        // A limited product's batch: its buyers' active holds and pending or paid orders
        &per_buyer,
        // Tickets with their positions (entity/src/sql: tickets_query)
        &tickets,
    ];
    for sql in queries {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!("EXPLAIN {sql}"),
            ))
            .await
            .expect("explain");
        for row in rows {
            let access: Option<String> = row.try_get("", "type").ok();
            let key: Option<String> = row.try_get("", "key").ok();
            let extra: String = row.try_get("", "Extra").unwrap_or_default();
            let table: String = row.try_get("", "table").unwrap_or_default();
            // The bound JSON list itself, and its materialized copy, are read whole by design.
            if extra.contains("Table function") || table.starts_with("<subquery") {
                continue;
            }
            // No access type at all: the optimizer proved from a unique index that no row
            // matches ("Impossible WHERE noticed after reading const tables").
            let Some(access) = access else { continue };
            assert_ne!(access, "ALL", "full scan for {sql}");
            assert!(key.is_some(), "no index for {sql}");
            // Thousands of rows match a prefix of some of these indexes (the product's holds
            // and orders, every unexpired hold): an index used that way shows here.
            let estimate: i64 = row
                .try_get::<Option<i64>>("", "rows")
                .ok()
                .flatten()
                .unwrap_or_default();
            assert!(
                estimate <= 500,
                "{sql}: {estimate} rows estimated through {key:?}"
            );
        }
    }
}
