//! The listener against bots: `X-Forwarded-For` is believed only from trusted proxies. All
//! through the real binary.

use std::{process::Command, time::Instant};

use flash_sale_tests::{AppOptions, Client, TestApp, binary, into_response, on_both_databases};
use serde_json::json;

fn with_env(env: &[(&'static str, &str)]) -> AppOptions {
    AppOptions {
        extra_env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ..Default::default()
    }
}

on_both_databases! {
    async fn forwarded_for_counts_only_from_trusted_proxies(backend: Backend) {
        let limit = ("HOLD_RATE_LIMIT_PER_SECOND", "5");
        let app = TestApp::spawn_with(backend, with_env(&[limit])).await;
        let product = app.create_product(1000).await;
        let behind_proxy = app.spawn_another_api(&with_env(&[limit, ("TRUSTED_PROXIES", "127.0.0.1")]));
        let behind_proxy = Client::new(&behind_proxy);

        // 20 holds at once, each claiming another address; the limiter allows a burst of 5,
        // and 5 more per second the burst takes.
        let holds = async |client: &Client, forwarded: fn(usize) -> String| {
            let started = Instant::now();
            let answers = client
                .all_at_once(20, move |c, i| async move {
                    let r = c
                        .http
                        .post(format!("{}/api/holds", c.address))
                        .header("x-forwarded-for", forwarded(i))
                        .json(&json!({"product_id": product, "qty": 1}))
                        .send()
                        .await
                        .expect("hold");
                    into_response(r).await
                })
                .await;
            let allowed = 5 + (started.elapsed().as_millis() / 200) as usize;
            let served = answers.iter().filter(|r| r.status != 429).count();
            for r in answers.iter().filter(|r| r.status == 429) {
                assert_eq!(r.code(), "rate_limited", "{}", r.body);
            }
            (served, allowed)
        };

        // Not from a trusted proxy: the header is the client's own claim, ignored.
        let (served, allowed) = holds(&app.client, |i| format!("198.51.100.{i}")).await;
        assert!(served <= allowed, "{served} holds served, {allowed} allowed");

        // From a trusted proxy: each forwarded address is a client of its own.
        let (served, _) = holds(&behind_proxy, |i| format!("198.51.100.{}", 100 + i)).await;
        assert_eq!(served, 20, "every client within its own limit");

        // A made-up entry left of the proxy's own is the client's claim: the client is the
        // rightmost address the proxy did not vouch for itself.
        let (served, allowed) =
            holds(&behind_proxy, |i| format!("192.0.2.{i}, 203.0.113.7")).await;
        assert!(served <= allowed, "{served} holds served, {allowed} allowed");
    }
}

#[test]
fn listener_settings_are_listed_and_checked_at_start() {
    let help = Command::new(binary("flash-sale-api"))
        .arg("--help")
        .output()
        .expect("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("env: TRUSTED_PROXIES"),
        "--help lacks TRUSTED_PROXIES:\n{text}"
    );
    for (var, bad) in [
        ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
    ] {
        let out = Command::new(binary("flash-sale-api"))
            .arg("openapi")
            .env_clear()
            .env(var, bad)
            .output()
            .expect("start");
        assert!(!out.status.success(), "{var}={bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var),
            "{var}={bad}: the message names the variable:\n{err}"
        );
    }
}
