//! Waiting for something to happen, with a deadline: a test polls for the condition it needs
//! instead of sleeping for a time it guessed would be enough.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How often [`eventually`] checks its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Checks `check` every [`POLL`] until it returns `Some`, and returns that value; fails the test,
/// naming `what`, if `within` passes first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
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
