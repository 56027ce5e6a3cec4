//! Waiting for something to happen, with a deadline: a test polls for the condition it needs
//! instead of sleeping for a time it guessed would be enough.

use std::{
    fmt::Display,
    future::Future,
    time::{Duration, Instant},
};

/// How often [`eventually`] checks its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Checks `check` every [`POLL`] until it returns `Some`, and returns that value; fails the test,
/// naming `what`, if `within` passes first. `what` is written only then: a
/// [`std::fmt::from_fn`] can show what a process logged until the failure.
pub async fn eventually<T, F, Fut>(what: impl Display, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `age` has passed since the newest of `times`, times the service wrote (orders'
/// `created_at`): for deadlines it keys to its own timestamps, such as the payment timeout,
/// which nothing reports before a sweep acts on them. Same machine, same clock.
pub async fn until_older_than<'a>(
    times: impl IntoIterator<Item = &'a serde_json::Value>,
    age: Duration,
) {
    let newest = times
        .into_iter()
        .map(|t| {
            t.as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .unwrap_or_else(|| panic!("not an RFC 3339 time: {t}"))
                .to_utc()
        })
        .max()
        .expect("at least one time");
    if let Ok(left) = (newest + age - chrono::Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}
