//! Concurrency for tests: requests released together ([`all_at_once`]) and a steady hold load
//! that records every answer ([`Load`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{Client, eventually};

/// One answer seen by a [`Load`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which of the load's clients asked.
    pub client: usize,
    pub sent: Instant,
    pub took: Duration,
    /// 0 when no HTTP answer came (the connection failed or was closed); `code` then says why.
    pub status: u16,
    pub code: String,
    pub hold_id: Option<i64>,
}

/// Holds of one unit requested in a loop, `per_client` at a time through each client, until
/// [`finish`](Self::finish); every answer is recorded, and a test may wait on the answers so far
/// ([`until`](Self::until)). Dropped unfinished (a failed test), it stops.
pub struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn holds(clients: &[Client], product_id: i64, per_client: usize) -> Self {
        Self::posting(
            clients,
            json!({"product_id": product_id, "qty": 1}),
            per_client,
        )
    }

    /// The same loop with another hold body (a cart's, say).
    pub fn posting(clients: &[Client], body: serde_json::Value, per_client: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (client, c) in clients.iter().enumerate() {
            for _ in 0..per_client {
                let (c, stop, answers) = (c.clone(), stop.clone(), answers.clone());
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let req = c.buyer_request(reqwest::Method::POST, "/api/holds", Some(&body));
                        let (status, code, hold_id) = match c.try_send("/api/holds", req).await {
                            Ok(r) => {
                                let id = r.body["hold_id"].as_i64().filter(|_| r.status == 201);
                                (r.status, r.code().to_owned(), id)
                            }
                            Err(e) => (0, format!("no answer: {e}"), None),
                        };
                        let took = sent.elapsed();
                        answers.lock().expect("answers").push(Answer {
                            client,
                            sent,
                            took,
                            status,
                            code,
                            hold_id,
                        });
                        // A failing server answers at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
        }
        Self {
            stop,
            answers,
            tasks,
        }
    }

    /// Waits until the answers so far satisfy `enough` (30 s at most, then the test fails with
    /// `what`), e.g. until some holds were granted before a fault is injected. Returns how many
    /// answers there were then.
    pub async fn until(&self, what: &str, enough: impl Fn(&[Answer]) -> bool) -> usize {
        let (answers, enough) = (&self.answers, &enough);
        eventually(what, Duration::from_secs(30), || async move {
            let answers = answers.lock().expect("answers");
            enough(&answers).then_some(answers.len())
        })
        .await
    }

    /// Stops the load and returns every answer, in the order they were sent.
    pub async fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("load task panicked");
        }
        let mut all = std::mem::take(&mut *self.answers.lock().expect("answers"));
        all.sort_by_key(|a| a.sent);
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `n` requests at the same instant: every task is spawned and waits on one barrier, so
/// they hit the server together, not one after another.
pub async fn all_at_once<F, Fut, T>(n: usize, make: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let fut = make(i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task panicked"));
    }
    out
}

impl Client {
    /// `n` requests through this client at the same instant (see [`all_at_once`]): `make` gets a
    /// clone of the client and the request's index.
    pub async fn all_at_once<F, Fut, T>(&self, n: usize, make: F) -> Vec<T>
    where
        F: Fn(Client, usize) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        all_at_once_across(std::slice::from_ref(self), n, make).await
    }
}

/// `n` requests at the same instant, request `i` through `clients[i % clients.len()]` (several
/// API processes, or Galera nodes, in turn).
pub async fn all_at_once_across<F, Fut, T>(clients: &[Client], n: usize, make: F) -> Vec<T>
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    all_at_once(n, |i| make(clients[i % clients.len()].clone(), i)).await
}
