//! Gathers concurrent calls for the same key into batches handled by one task per key.
//!
//! Used twice: hold requests for one product become one locking transaction
//! ([`crate::batching::coalesce::HoldCoalescer`]), and concurrent reads of one product share one query
//! ([`crate::batching::coalesce::ProductReads`]). A batch is taken only from calls that arrived before it
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

/// A call: its request, where its answer goes, and when it was queued.
type Call<Req, Resp> = (
    Req,
    oneshot::Sender<Result<Resp, BatchError>>,
    tokio::time::Instant,
);
type RunFn<K, Req, Resp> =
    dyn Fn(K, Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<Resp>> + Send>> + Send + Sync;

/// How a batcher gathers.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// The batcher's name in its metric (`batch_calls_waiting{batcher}`).
    pub name: &'static str,
    /// Most calls in one batch.
    pub max_batch: usize,
    /// After the first call of a batch, how long to wait for more (zero: take what is queued).
    pub max_wait: Duration,
    /// Most calls waiting for one key; beyond it a call is refused at once
    /// ([`BatchError::Overloaded`]) instead of the queue growing without bound.
    pub max_queued: usize,
}

/// Why a call got no answer from its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The key's queue was full.
    #[error("too many requests are waiting for this key")]
    Overloaded,
    /// The batch panicked: a bug, reported with the panic's message.
    #[error("the batch panicked: {0}")]
    Panicked(String),
}

/// One task per key with calls queued or in flight: it starts with the key's first call and
/// ends as soon as its queue is empty, so keys that come once (an unknown product id in a
/// spray of requests) leave nothing behind. A key runs one batch at a time: calls that arrive
/// while it runs make the next, larger batch (for holds, faster than a second batch waiting on
/// the product's row lock), and a read shares only a query that started after its arrival.
pub struct KeyedBatcher<K, Req, Resp> {
    queues: Mutex<HashMap<K, mpsc::Sender<Call<Req, Resp>>>>,
    run: Box<RunFn<K, Req, Resp>>,
    policy: BatchPolicy,
    /// Calls queued or in a running batch, not yet answered: a test knows from it that its
    /// request has taken its place, an operator how deep the queues are.
    waiting: metrics::Gauge,
}

/// One call counted in [`KeyedBatcher::waiting`] until it is answered or its caller leaves.
struct Waiting(metrics::Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
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
            run: Box::new(move |k, reqs| Box::pin(run(k, reqs))),
            waiting: metrics::gauge!("batch_calls_waiting", "batcher" => policy.name),
            policy: BatchPolicy {
                max_batch: policy.max_batch.max(1),
                max_queued: policy.max_queued.max(1),
                ..policy
            },
        })
    }

    /// Whether `key` has calls queued or a batch running in this process now.
    pub fn is_busy(&self, key: &K) -> bool {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(key).is_some_and(|s| !s.is_closed())
    }

    /// Queues `req` behind `key` and waits for its answer. A caller that stops waiting (its
    /// client went away) is left out of any batch that has not started yet.
    pub async fn call(self: &Arc<Self>, key: K, req: Req) -> Result<Resp, BatchError> {
        let (reply, answer) = oneshot::channel();
        let new_queue = self.enqueue(&key, (req, reply, tokio::time::Instant::now()))?;
        self.waiting.increment(1.0);
        let _waiting = Waiting(self.waiting.clone());
        if let Some(rx) = new_queue {
            // Started only now, so that it finds this first call queued.
            tokio::spawn(self.clone().drain(key, rx));
        }
        // No sender is held while waiting: a call could only be stranded in a queue nobody
        // reads if one were, and then this would wait forever instead of failing.
        answer.await.unwrap_or_else(|_| {
            // The task ended without answering: only a panic outside `run` does that.
            Err(BatchError::Panicked("the batch task ended".into()))
        })
    }

    /// Puts a call in its key's queue, making the queue if the key has none (its receiving end
    /// is returned, for the caller to start its task). The send happens under the table's lock,
    /// and a key's task retires only under that lock with its queue empty, so a call never
    /// lands in a queue whose task has gone. (Sent outside it, a call could pass the task's
    /// last look at the queue and then sit there unanswered: a hang, found by
    /// `calls_racing_a_retiring_task_are_all_answered`.)
    #[allow(clippy::type_complexity)]
    fn enqueue(
        &self,
        key: &K,
        mut call: Call<Req, Resp>,
    ) -> Result<Option<mpsc::Receiver<Call<Req, Resp>>>, BatchError> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (sender, new_queue) = match queues.get(key) {
                Some(s) if !s.is_closed() => (s.clone(), None),
                // None yet, or its task died (a panic outside `run`): a new one.
                _ => {
                    let (tx, rx) = mpsc::channel(self.policy.max_queued);
                    queues.insert(key.clone(), tx.clone());
                    (tx, Some(rx))
                }
            };
            match sender.try_send(call) {
                Ok(()) => return Ok(new_queue),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(BatchError::Overloaded),
                // Its task died between the check and the send: make another.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    call = back;
                    queues.remove(key);
                }
            }
        }
    }

    /// Keys with a task right now.
    pub fn active_keys(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn drain(self: Arc<Self>, key: K, mut rx: mpsc::Receiver<Call<Req, Resp>>) {
        let policy = self.policy;
        loop {
            // What queues while a batch runs joins the next one.
            let first = match rx.try_recv() {
                Ok(call) => call,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Retire this key's task, unless a call slipped in meanwhile. Calls are
                    // sent under this lock, so under it "empty" stays empty: the queue leaves
                    // the table and closes with nothing in it.
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    if !rx.is_empty() {
                        continue;
                    }
                    queues.remove(&key);
                    // A burst of one-off keys must not leave a large table behind.
                    if queues.capacity() > 64 && queues.capacity() > 4 * queues.len() {
                        queues.shrink_to_fit();
                    }
                    rx.close();
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
            // `max_wait` counts from the batch's first call's arrival: a call that already
            // waited that long behind the previous batch starts at once with what is queued.
            // (Counted from the slot's release instead, every batch under load waited a full
            // `max_wait` more, with its company long since queued.)
            let deadline = batch[0].2 + policy.max_wait;
            if batch.len() < policy.max_batch && deadline > tokio::time::Instant::now() {
                while batch.len() < policy.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(call)) => batch.push(call),
                        _ => break,
                    }
                }
            }
            // Served right in this task: a task spawned for it would start behind every request
            // task its last batch's answers woke, and the key's next batch with it.
            self.serve(&key, batch).await;
        }
    }

    async fn serve(&self, key: &K, batch: Vec<Call<Req, Resp>>) {
        // Callers that gave up (client disconnected or timed out) get no share of the batch.
        let (reqs, replies): (Vec<Req>, Vec<_>) = batch
            .into_iter()
            .filter(|(_, reply, _)| !reply.is_closed())
            .map(|(req, reply, _)| (req, reply))
            .unzip();
        if reqs.is_empty() {
            return;
        }
        match caught((self.run)(key.clone(), reqs)).await {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), replies.len());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(panicked) => panicked.tell(replies),
        }
    }
}

/// A step of a batch that panicked, with the panic's message.
struct Panicked(String);

impl Panicked {
    /// Every caller of the batch gets the message, and it is logged.
    fn tell<Resp>(self, replies: Vec<oneshot::Sender<Result<Resp, BatchError>>>) {
        tracing::error!(panic = %self.0, "a batch panicked");
        for reply in replies {
            let _ = reply.send(Err(BatchError::Panicked(self.0.clone())));
        }
    }
}

/// Runs a step of a batch, catching a panic so that this key's task goes on serving. (Caught
/// where it runs rather than on a task of its own, which would queue the batch behind the
/// runtime's other tasks before it started.)
async fn caught<T>(step: impl Future<Output = T>) -> Result<T, Panicked> {
    futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(step))
        .await
        .map_err(|payload| Panicked(panic_message(payload.as_ref())))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Yields until `cond` holds; fails the test after 5 s instead of hanging.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn policy(max_wait_ms: u64) -> BatchPolicy {
        BatchPolicy {
            name: "test",
            max_batch: 8,
            max_wait: Duration::from_millis(max_wait_ms),
            max_queued: 64,
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
            assert_eq!(c.await.unwrap(), Ok(i as u32 * 10));
        }
        assert!(batches.load(Ordering::SeqCst) < 8, "calls were gathered");
    }

    /// The wait for company counts from the first call's arrival: a call that queued behind a
    /// running batch for longer than `max_wait` starts as soon as that batch ends.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_waited_behind_a_batch_starts_when_it_ends() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = gate.clone();
        let b = KeyedBatcher::new(policy(200), move |_k: u8, reqs: Vec<u32>| {
            let held = held.clone();
            async move {
                if reqs.contains(&1) {
                    // The first batch runs until the test lets it end.
                    let _ = held.acquire().await;
                }
                reqs
            }
        });
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1, 1).await }
        });
        // The first batch has waited its 200 ms for company and is running.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let second = tokio::spawn({
            let b = b.clone();
            async move {
                let answer = b.call(1, 2).await;
                (answer, tokio::time::Instant::now())
            }
        });
        // Queued far longer than `max_wait` by the time the first batch ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let released = tokio::time::Instant::now();
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(1));
        let (answer, at) = second.await.unwrap();
        assert_eq!(answer, Ok(2));
        assert!(
            at - released < Duration::from_millis(100),
            "the second batch waited {:?} more for company",
            at - released
        );
    }

    #[tokio::test]
    async fn a_key_leaves_no_task_once_its_queue_is_empty() {
        let b = KeyedBatcher::new(policy(0), |_k: u32, reqs: Vec<u32>| async move { reqs });
        for key in 0..1_000 {
            assert_eq!(b.call(key, key).await, Ok(key));
        }
        // Each task ends right after answering: the last one gets there soon after.
        until("one-off keys leave no task behind", || b.active_keys() == 0).await;
        assert!(
            b.queues.lock().unwrap().capacity() <= 64,
            "the table shrank back"
        );
        assert_eq!(b.call(7, 2).await, Ok(2), "a retired key comes back");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = started.clone();
        let b = KeyedBatcher::new(
            BatchPolicy {
                name: "test",
                max_batch: 1,
                max_wait: Duration::ZERO,
                max_queued: 2,
            },
            move |_k: u8, reqs: Vec<u32>| {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    reqs
                }
            },
        );
        let call = |i| {
            let b = b.clone();
            tokio::spawn(async move { b.call(1, i).await })
        };
        // One call in the running batch, two queued: the next finds the queue full.
        let mut waiting = vec![call(0)];
        until("the first batch runs", || {
            started.load(Ordering::SeqCst) > 0
        })
        .await;
        waiting.extend([call(1), call(2)]);
        until("two calls are queued", || {
            let queues = b.queues.lock().unwrap();
            queues.get(&1).is_some_and(|q| q.capacity() == 0)
        })
        .await;
        assert_eq!(b.call(1, 99).await, Err(BatchError::Overloaded));
        release.send(true).unwrap();
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(w.await.unwrap(), Ok(i as u32));
        }
    }

    /// A batch that notes the calls it ran, then waits until the test releases it (sends
    /// `true`); it answers each call with itself.
    #[allow(clippy::type_complexity)]
    fn stuck_batch() -> (
        Arc<Mutex<Vec<u32>>>,
        tokio::sync::watch::Sender<bool>,
        impl Fn(u8, Vec<u32>) -> Pin<Box<dyn Future<Output = Vec<u32>> + Send>> + Send + Sync,
    ) {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = ran.clone();
        let run = move |_k: u8, reqs: Vec<u32>| -> Pin<Box<dyn Future<Output = Vec<u32>> + Send>> {
            let (seen, mut released) = (seen.clone(), released.clone());
            Box::pin(async move {
                seen.lock().unwrap().extend(reqs.iter().copied());
                let _ = released.wait_for(|r| *r).await;
                reqs
            })
        };
        (ran, release, run)
    }

    #[tokio::test]
    async fn callers_that_gave_up_are_left_out_of_the_next_batch() {
        let (served, release, run) = stuck_batch();
        let b = KeyedBatcher::new(
            BatchPolicy {
                name: "test",
                max_batch: 100,
                max_wait: Duration::ZERO,
                max_queued: 100,
            },
            run,
        );
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1, 0).await }
        });
        until("the first batch runs", || {
            !served.lock().unwrap().is_empty()
        })
        .await;
        // Queued behind the running batch: one caller stays, one gives up.
        let stays = tokio::spawn({
            let b = b.clone();
            async move { b.call(1, 1).await }
        });
        let gives_up = tokio::spawn({
            let b = b.clone();
            async move { b.call(1, 2).await }
        });
        until("both callers are queued", || {
            let queues = b.queues.lock().unwrap();
            queues.get(&1).is_none_or(|q| q.capacity() <= 98)
        })
        .await;
        gives_up.abort();
        let _ = gives_up.await;
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        assert_eq!(stays.await.unwrap(), Ok(1));
        assert_eq!(
            *served.lock().unwrap(),
            vec![0, 1],
            "the caller that left was not served"
        );
    }

    #[tokio::test]
    async fn a_panicking_batch_reports_its_message_and_the_key_keeps_serving() {
        let b = KeyedBatcher::new(policy(0), |_k: u8, reqs: Vec<u32>| async move {
            if reqs.contains(&13) {
                panic!("boom");
            }
            reqs
        });
        assert_eq!(
            b.call(1, 13).await,
            Err(BatchError::Panicked("boom".into()))
        );
        assert_eq!(b.call(1, 14).await, Ok(14), "the key is served again");
    }

    /// Calls racing a key's task as it retires (its queue just ran empty): each must be served,
    /// never left in a queue whose task has gone. Many short-lived keys, many threads, and a
    /// bound on every call, so a lost call fails the test instead of hanging it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn calls_racing_a_retiring_task_are_all_answered() {
        let b = KeyedBatcher::new(policy(0), |_k: u32, reqs: Vec<u32>| async move { reqs });
        let callers: Vec<_> = (0..8u32)
            .map(|t| {
                let b = b.clone();
                tokio::spawn(async move {
                    for i in 0..20_000u32 {
                        // Few keys, so calls often meet a task that is retiring.
                        let key = i % 4;
                        let answer = tokio::time::timeout(Duration::from_secs(5), b.call(key, t))
                            .await
                            .unwrap_or_else(|_| {
                                panic!("call {i} of caller {t} was never answered")
                            });
                        assert_eq!(answer, Ok(t));
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
    }
}
