//! Gathers concurrent calls for the same key into batches handled by one task per key.
//!
//! Used twice: hold requests for one product become one locking transaction
//! ([`crate::coalesce::HoldCoalescer`]), and concurrent reads of one product share one query
//! ([`crate::coalesce::ProductReads`]). A batch is taken only from calls that arrived before it
//! started, so a read answered from a batch always began after its request did.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

type Call<Req, Resp> = (Req, oneshot::Sender<Resp>);
type RunFn<K, Req, Resp> =
    dyn Fn(K, Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<Resp>> + Send>> + Send + Sync;

/// How a batcher gathers.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most calls in one batch.
    pub max_batch: usize,
    /// After the first call of a batch, how long to wait for more (zero: take what is queued).
    pub max_wait: Duration,
    /// A key's task ends after this long without calls (keys come from clients: unbounded).
    pub idle: Duration,
}

pub struct KeyedBatcher<K, Req, Resp> {
    queues: Mutex<HashMap<K, mpsc::UnboundedSender<Call<Req, Resp>>>>,
    run: Arc<RunFn<K, Req, Resp>>,
    policy: BatchPolicy,
}

impl<K, Req, Resp> KeyedBatcher<K, Req, Resp>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// `run` gets a key and its batch, in arrival order, and must answer each call, in order.
    pub fn new<F, Fut>(policy: BatchPolicy, run: F) -> Arc<Self>
    where
        F: Fn(K, Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        Arc::new(Self {
            queues: Mutex::new(HashMap::new()),
            run: Arc::new(move |k, reqs| Box::pin(run(k, reqs))),
            policy,
        })
    }

    /// Queues `req` behind `key` and waits for its answer. `None` only if the batch task died
    /// (a panic in `run`): the caller answers that as unavailable, never hangs.
    pub async fn call(self: &Arc<Self>, key: K, req: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        let mut call = (req, reply);
        loop {
            let sender = self.sender(&key);
            match sender.send(call) {
                Ok(()) => return answer.await.ok(),
                // The key's task ended between our lookup and our send: start another.
                Err(mpsc::error::SendError(back)) => {
                    call = back;
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    if queues.get(&key).is_some_and(|s| s.same_channel(&sender)) {
                        queues.remove(&key);
                    }
                }
            }
        }
    }

    fn sender(self: &Arc<Self>, key: &K) -> mpsc::UnboundedSender<Call<Req, Resp>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = queues.get(key)
            && !s.is_closed()
        {
            return s.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        queues.insert(key.clone(), tx.clone());
        tokio::spawn(self.clone().drain(key.clone(), rx));
        tx
    }

    async fn drain(self: Arc<Self>, key: K, mut rx: mpsc::UnboundedReceiver<Call<Req, Resp>>) {
        let policy = self.policy;
        loop {
            let first = match tokio::time::timeout(policy.idle, rx.recv()).await {
                Ok(Some(call)) => call,
                Ok(None) => return,
                Err(_idle) => {
                    // Retire this key's task, unless a call slipped in meanwhile.
                    let retired = {
                        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                        let idle = rx.is_empty();
                        if idle {
                            queues.remove(&key);
                        }
                        idle
                    };
                    if !retired {
                        continue;
                    }
                    rx.close();
                    // A sender cloned before the removal may still have sent: serve it.
                    let mut late = Vec::new();
                    while let Ok(call) = rx.try_recv() {
                        late.push(call);
                    }
                    if !late.is_empty() {
                        self.serve(&key, late).await;
                    }
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < policy.max_batch {
                match rx.try_recv() {
                    Ok(call) => batch.push(call),
                    Err(_) => break,
                }
            }
            if batch.len() < policy.max_batch && !policy.max_wait.is_zero() {
                let deadline = tokio::time::Instant::now() + policy.max_wait;
                while batch.len() < policy.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(call)) => batch.push(call),
                        _ => break,
                    }
                }
            }
            self.serve(&key, batch).await;
        }
    }

    async fn serve(&self, key: &K, batch: Vec<Call<Req, Resp>>) {
        let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = batch.into_iter().unzip();
        let answers = (self.run)(key.clone(), reqs).await;
        debug_assert_eq!(answers.len(), replies.len());
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that gave up (client disconnected) just does not read its answer.
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn policy(max_wait_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch: 8,
            max_wait: Duration::from_millis(max_wait_ms),
            idle: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn answers_each_call_in_order_and_batches_concurrent_ones() {
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = batches.clone();
        let b = KeyedBatcher::new(policy(20), move |_k: u8, reqs: Vec<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move { reqs.into_iter().map(|r| r * 10).collect() }
        });
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.call(1, i).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Some(i as u32 * 10));
        }
        assert!(batches.load(Ordering::SeqCst) < 8, "calls were gathered");
    }

    #[tokio::test]
    async fn idle_keys_retire_and_come_back() {
        let b = KeyedBatcher::new(policy(0), |_k: u8, reqs: Vec<u32>| async move { reqs });
        assert_eq!(b.call(7, 1).await, Some(1));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(b.queues.lock().unwrap().is_empty(), "the idle task retired");
        assert_eq!(b.call(7, 2).await, Some(2));
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_instead_of_hanging() {
        let b = KeyedBatcher::new(policy(0), |_k: u8, reqs: Vec<u32>| async move {
            if reqs.contains(&13) {
                panic!("boom");
            }
            reqs
        });
        assert_eq!(b.call(1, 13).await, None);
        assert_eq!(b.call(1, 14).await, Some(14), "a new task serves the key");
    }
}
