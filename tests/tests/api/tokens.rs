//! Who may do what with `BUYER_AUTH=jwt`: the buyer is the token's `sub`, every buyer route
//! needs a valid token, another buyer's holds and orders do not exist, keys and rate limits are
//! per buyer; forged, stale and confused tokens are refused; public keys rotate without a
//! restart.

use std::time::Duration;

use flash_sale_tests::{
    AppOptions, Backend, TestApp, eventually, on_both_databases,
    tokens::{JWT_SECRET, KeyPair, buyer_token, claims, jwt_options, sign_hs256, unsigned_token},
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

on_both_databases!(
    another_buyers_holds_and_orders_do_not_exist,
    per_buyer_limits_count_the_token_not_the_body,
    idempotency_keys_and_rate_limits_are_each_buyers_own
);

async fn another_buyers_holds_and_orders_do_not_exist(backend: Backend) {
    let app = TestApp::spawn_with(backend, jwt_options()).await;
    let product = app.create_product(20).await;
    let ann = app.with_token(&buyer_token("ann"));
    let bob = app.with_token(&buyer_token("bob"));
    let held = ann.hold(product, 2).await;
    assert_eq!(held.status, 201, "{}", held.body);
    assert_eq!(held.body["buyer_id"], "ann", "the buyer is the token's sub");
    assert_eq!(
        held.body["client_secret"],
        Value::Null,
        "no secret with tokens"
    );
    let hold = held.body["hold_id"].as_i64().expect("hold");
    let spare = ann.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = ann.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");

    // Bob, 20 times at once, every route: an unknown id's answer each time.
    let answers = bob
        .all_at_once(20, move |c, i| async move {
            match i % 4 {
                0 => c.get(&format!("/api/holds/{spare}")).await,
                1 => c.release(spare).await,
                2 => c.order(spare).await,
                _ => c.get(&format!("/api/orders/{order}")).await,
            }
        })
        .await;
    for r in &answers {
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(
            ["hold_not_found", "order_not_found"].contains(&r.code()),
            "{}",
            r.body
        );
    }
    // No token, or a bad one: 401 with a challenge, and nothing happens.
    for c in [
        app.stranger(),
        app.with_token("not.a.token"),
        app.with_token(""),
    ] {
        for r in [
            c.get(&format!("/api/holds/{spare}")).await,
            c.release(spare).await,
            c.hold(product, 1).await,
        ] {
            assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer"))
            );
        }
    }
    assert_eq!(
        app.available(product).await,
        17,
        "nothing released, nothing held"
    );
    assert_eq!(
        ann.get(&format!("/api/holds/{spare}")).await.body["status"],
        "active"
    );
    assert_eq!(
        ann.get(&format!("/api/orders/{order}")).await.body["buyer_id"],
        "ann"
    );
    assert_eq!(ann.release(spare).await.status, 200);
    app.assert_stock_conserved().await;
}

async fn per_buyer_limits_count_the_token_not_the_body(backend: Backend) {
    let app = TestApp::spawn_with(backend, jwt_options()).await;
    let product = app.create_product(100).await;
    let limited = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"per_buyer_limit": 2})),
        )
        .await;
    assert_eq!(limited.status, 200, "{}", limited.body);
    let ann = app.with_token(&buyer_token("ann"));
    // Naming someone else in the body is refused, not believed.
    let body = json!({"product_id": product, "qty": 1, "buyer_id": "someone-else"});
    let r = ann
        .request(reqwest::Method::POST, "/api/holds", Some(body))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{}",
        r.body
    );
    assert_eq!(r.body["errors"][0]["field"], "buyer_id");
    // Ten at once, each naming a different buyer or none: the token's buyer gets 2 units.
    let answers = ann
        .all_at_once(10, move |c, i| async move {
            let body = if i % 2 == 0 {
                json!({"product_id": product, "qty": 1})
            } else {
                json!({"product_id": product, "qty": 1, "buyer_id": "ann"})
            };
            c.request(reqwest::Method::POST, "/api/holds", Some(body))
                .await
        })
        .await;
    let granted = answers.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        granted,
        2,
        "{:?}",
        answers.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
    );
    assert!(
        answers
            .iter()
            .filter(|r| r.status != 201)
            .all(|r| r.code() == "buyer_limit_exceeded")
    );
    // Another buyer has a limit of its own.
    assert_eq!(
        app.with_token(&buyer_token("bob"))
            .hold(product, 2)
            .await
            .status,
        201
    );
    assert_eq!(app.available(product).await, 96);
}

async fn idempotency_keys_and_rate_limits_are_each_buyers_own(backend: Backend) {
    let mut options = jwt_options();
    options
        .extra_env
        .push(("HOLD_RATE_LIMIT_PER_SECOND", "2".into()));
    let app = TestApp::spawn_with(backend, options).await;
    let product = app.create_product(100).await;
    let ann = app.with_token(&buyer_token("ann"));
    let bob = app.with_token(&buyer_token("bob"));
    let body = json!({"product_id": product, "qty": 1});
    // One key, two buyers, at the same moment: two holds.
    let [a, b]: [flash_sale_tests::Response; 2] = flash_sale_tests::all_at_once(2, |i| {
        let (c, body) = (if i == 0 { ann.clone() } else { bob.clone() }, body.clone());
        async move { c.post_with_key("/api/holds", "shared-key", &body).await }
    })
    .await
    .try_into()
    .expect("two answers");
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.body, b.body);
    assert_ne!(a.body["hold_id"], b.body["hold_id"]);
    assert_eq!(
        (&a.body["buyer_id"], &b.body["buyer_id"]),
        (&json!("ann"), &json!("bob"))
    );
    // Ann's retry is Ann's answer.
    let again = ann.post_with_key("/api/holds", "shared-key", &body).await;
    assert!(again.replayed());
    assert_eq!(again.body, a.body);

    // Ann hammers: her budget runs out; Bob, from the same address, keeps his.
    let hammer = ann
        .all_at_once(
            10,
            move |c, _| async move { c.hold(product, 1).await.status },
        )
        .await;
    assert!(hammer.contains(&429), "{hammer:?}");
    assert!(
        hammer.iter().filter(|s| **s == 201).count() <= 2,
        "{hammer:?}"
    );
    let bobs = bob
        .all_at_once(
            2,
            move |c, _| async move { c.hold(product, 1).await.status },
        )
        .await;
    assert!(
        bobs.contains(&201),
        "another buyer is not limited by Ann: {bobs:?}"
    );
}

/// An API that takes HS256 tokens and RS256 tokens of `rsa`'s public key, with an issuer and an
/// audience, and a product of 10 units.
async fn strict_app(rsa: &KeyPair, dir: &std::path::Path) -> (TestApp, i64) {
    let keys = dir.join("keys.pem");
    std::fs::write(&keys, &rsa.public_pem).expect("keys");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        AppOptions {
            extra_env: vec![
                ("BUYER_AUTH", "jwt".into()),
                ("BUYER_JWT_SECRET", JWT_SECRET.into()),
                ("BUYER_JWT_PUBLIC_KEYS", keys.display().to_string()),
                ("BUYER_JWT_ISSUER", "https://id.shop.test".into()),
                ("BUYER_JWT_AUDIENCE", "flash-sale".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(10).await;
    (app, product)
}

/// Valid claims for [`strict_app`], with `extra` claims set over them.
fn good(extra: Value) -> Value {
    let now = flash_sale_tests::now_unix();
    let mut c =
        json!({"sub": "ann", "exp": now + 600, "iss": "https://id.shop.test", "aud": "flash-sale"});
    for (k, v) in extra.as_object().expect("claims") {
        c[k] = v.clone();
    }
    c
}

/// `token` is refused by `app` with 401 `unauthorized` on every buyer route, and holds nothing.
async fn assert_refused(app: &TestApp, product: i64, what: &str, token: &str) {
    let held = app.available(product).await;
    let c = app.with_token(token);
    let r = c.hold(product, 1).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "unauthorized"),
        "{what}: {}",
        r.body
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{what}"
    );
    assert_eq!(c.get("/api/holds/1").await.status, 401, "{what}");
    assert_eq!(c.order(1).await.status, 401, "{what}");
    assert_eq!(app.available(product).await, held, "{what}: nothing held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_alg_none_is_refused() {
    let (rsa, dir) = (
        KeyPair::generate(Algorithm::RS256),
        tempfile::tempdir().expect("dir"),
    );
    let (app, product) = strict_app(&rsa, dir.path()).await;
    assert_refused(&app, product, "alg none", &unsigned_token(&good(json!({})))).await;
}

/// The classic algorithm confusion: HS256 "signed" with the RS256 public key as its HMAC key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_is_refused() {
    let (rsa, dir) = (
        KeyPair::generate(Algorithm::RS256),
        tempfile::tempdir().expect("dir"),
    );
    let (app, product) = strict_app(&rsa, dir.path()).await;
    let confused = sign_hs256(rsa.public_pem.as_bytes(), &good(json!({})));
    assert_refused(&app, product, "HS256 with the public key", &confused).await;
    // The same key pair signing RS256, as its owner does: accepted.
    let genuine = rsa.sign(None, &good(json!({})));
    assert_eq!(app.with_token(&genuine).hold(product, 1).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let (rsa, dir) = (
        KeyPair::generate(Algorithm::RS256),
        tempfile::tempdir().expect("dir"),
    );
    let (app, product) = strict_app(&rsa, dir.path()).await;
    let now = flash_sale_tests::now_unix();
    // Past the 60 s leeway; within it, still accepted (clock skew).
    let expired = sign_hs256(JWT_SECRET.as_bytes(), &good(json!({"exp": now - 120})));
    assert_refused(&app, product, "expired", &expired).await;
    let skewed = sign_hs256(JWT_SECRET.as_bytes(), &good(json!({"exp": now - 30})));
    assert_eq!(app.with_token(&skewed).hold(product, 1).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_yet_valid_is_refused() {
    let (rsa, dir) = (
        KeyPair::generate(Algorithm::RS256),
        tempfile::tempdir().expect("dir"),
    );
    let (app, product) = strict_app(&rsa, dir.path()).await;
    let now = flash_sale_tests::now_unix();
    let early = sign_hs256(JWT_SECRET.as_bytes(), &good(json!({"nbf": now + 120})));
    assert_refused(&app, product, "not yet valid", &early).await;
    let skewed = sign_hs256(JWT_SECRET.as_bytes(), &good(json!({"nbf": now + 30})));
    assert_eq!(app.with_token(&skewed).hold(product, 1).await.status, 201);
}

/// Every other way a token can be wrong: each one is 401 `unauthorized`, and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_tokens_are_refused() {
    let (rsa, dir) = (
        KeyPair::generate(Algorithm::RS256),
        tempfile::tempdir().expect("dir"),
    );
    let (app, product) = strict_app(&rsa, dir.path()).await;
    let now = flash_sale_tests::now_unix();
    let hs = |claims: Value| sign_hs256(JWT_SECRET.as_bytes(), &claims);
    let other_key = KeyPair::generate(Algorithm::RS256);
    let refused = [
        (
            "another secret",
            sign_hs256(b"another-secret-of-more-than-32-bytes!!", &good(json!({}))),
        ),
        ("another key pair", other_key.sign(None, &good(json!({})))),
        (
            "no exp",
            hs(json!({"sub": "ann", "iss": "https://id.shop.test", "aud": "flash-sale"})),
        ),
        (
            "no sub",
            hs(json!({"exp": now + 600, "iss": "https://id.shop.test", "aud": "flash-sale"})),
        ),
        (
            "another issuer",
            hs(good(json!({"iss": "https://evil.test"}))),
        ),
        ("another audience", hs(good(json!({"aud": "another-api"})))),
        (
            "a sub that is no buyer id",
            hs(good(json!({"sub": "tab\there"}))),
        ),
        (
            "a key id nobody has",
            rsa.sign(Some("unknown-kid"), &good(json!({}))),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    // Many at once: each is judged alone.
    let answers = flash_sale_tests::all_at_once(refused.len(), |i| {
        let c = app.with_token(&refused[i].1);
        async move { c.hold(product, 1).await }
    })
    .await;
    for ((what, _), r) in refused.iter().zip(&answers) {
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{what}: {}",
            r.body
        );
    }
    for (what, token) in &refused {
        assert_refused(&app, product, what, token).await;
    }
    assert_eq!(
        app.available(product).await,
        10,
        "no refused token held anything"
    );
    assert!(app.metric("buyer_tokens_refused_total").await >= 2.0 * refused.len() as f64);
    // The settings are not too strict: both kinds of valid token are served.
    for token in [hs(good(json!({}))), rsa.sign(None, &good(json!({})))] {
        assert_eq!(app.with_token(&token).hold(product, 1).await.status, 201);
    }
}

/// RS256, ES256 and EdDSA keys from a JWKS, then a PEM file; a rewritten file is used without
/// a restart (the contract: within 60 s), and a removed key stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_from_a_jwks_or_pem_file_rotate_without_a_restart() {
    let (rsa, ec, ed) = (
        KeyPair::generate(Algorithm::RS256),
        KeyPair::generate(Algorithm::ES256),
        KeyPair::generate(Algorithm::EdDSA),
    );
    let dir = tempfile::tempdir().expect("dir");
    let keys = dir.path().join("jwks.json");
    let jwks = |pairs: &[(&KeyPair, &str)]| {
        json!({"keys": pairs.iter().map(|(k, kid)| k.jwk(kid)).collect::<Vec<_>>()}).to_string()
    };
    std::fs::write(&keys, jwks(&[(&rsa, "rsa-1"), (&ec, "ec-1")])).expect("jwks");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        AppOptions {
            extra_env: vec![
                ("BUYER_AUTH", "jwt".into()),
                ("BUYER_JWT_PUBLIC_KEYS", keys.display().to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(100).await;
    let hold_with = |token: String| {
        let c = app.with_token(&token);
        async move { c.hold(product, 1).await.status }
    };
    assert_eq!(
        hold_with(rsa.sign(Some("rsa-1"), &claims("ann"))).await,
        201
    );
    assert_eq!(hold_with(ec.sign(Some("ec-1"), &claims("ann"))).await, 201);
    assert_eq!(
        hold_with(ec.sign(None, &claims("ann"))).await,
        201,
        "no kid: the algorithm's keys"
    );
    assert_eq!(
        hold_with(ed.sign(Some("ed-1"), &claims("ann"))).await,
        401,
        "not yet published"
    );

    // Rotation: the identity provider publishes the Ed25519 key and retires the RSA one.
    std::fs::write(&keys, jwks(&[(&ec, "ec-1"), (&ed, "ed-1")])).expect("jwks");
    let ed_token = ed.sign(Some("ed-1"), &claims("ann"));
    eventually("the new key in use", Duration::from_secs(60), || {
        let token = ed_token.clone();
        let hold = &hold_with;
        async move { (hold(token).await == 201).then_some(()) }
    })
    .await;
    assert_eq!(
        hold_with(rsa.sign(Some("rsa-1"), &claims("ann"))).await,
        401,
        "retired"
    );

    // The same keys as a PEM file, which has no key ids.
    std::fs::write(&keys, format!("{}{}", rsa.public_pem, ed.public_pem)).expect("pem");
    let rsa_token = rsa.sign(None, &claims("ann"));
    eventually("the PEM keys in use", Duration::from_secs(60), || {
        let token = rsa_token.clone();
        let hold = &hold_with;
        async move { (hold(token).await == 201).then_some(()) }
    })
    .await;
    assert_eq!(hold_with(ed.sign(None, &claims("ann"))).await, 201);
    assert_eq!(
        hold_with(ec.sign(None, &claims("ann"))).await,
        401,
        "dropped from the file"
    );

    // A broken file keeps the keys in use (and is counted, for an alert).
    std::fs::write(&keys, "not keys at all").expect("broken");
    eventually("the broken file read", Duration::from_secs(60), || async {
        let failed = app.metrics_text().await;
        failed
            .contains(r#"buyer_token_key_reloads_total{outcome="failed"}"#)
            .then_some(())
    })
    .await;
    assert_eq!(hold_with(ed.sign(None, &claims("ann"))).await, 201, "kept");
}
