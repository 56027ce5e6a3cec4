//! The log lines' way out of a request: handed to one writer thread that wakes on a timer,
//! drains every line waiting, writes them through buffers and flushes.
//!
//! Why not `tracing_appender::non_blocking`: its thread blocks on the channel between lines,
//! so under load nearly every line woke it (a futex call in the request's thread, and the
//! writer's own spinning and yielding in the channel before it sleeps), and it flushed each
//! time it caught up: two `write` calls for every line or two. On two cores shared with the
//! database and the load, that thread competed with the requests. Here a request's line is a
//! copy and a `try_send` that never wakes anyone, and the thread writes a tick's lines at once.
//!
//! Like `non_blocking`'s default, the queue is bounded and lossy: beyond [`QUEUE_LINES`]
//! waiting lines a new line is dropped rather than making a request wait, and counted in
//! `log_lines_dropped_total`.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread::Thread,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer (tracing-appender's default bound).
pub const QUEUE_LINES: usize = 128_000;
/// How long a line may wait to be written while lines keep coming.
const BUSY_TICK: Duration = Duration::from_millis(10);
/// The same when the last tick found nothing: an idle process wakes ten times a second.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// How long a process at its end waits for the last lines to be written (tracing-appender's
/// default too): a destination that blocks (a stdout pipe nobody reads) must not keep the
/// process from exiting.
const FINAL_WAIT: Duration = Duration::from_secs(1);

/// The handle log events write to: each whole line is queued for the writer thread.
pub struct LineQueue {
    lines: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Stops the writer thread when dropped, after it has written every line queued before (or
/// after [`FINAL_WAIT`], whichever comes first).
pub struct WriterGuard {
    stop: Arc<AtomicBool>,
    thread: Thread,
    /// Closed by the writer thread when it has written its last lines.
    finished: Receiver<()>,
}

/// Starts the writer thread over `out` (flushed after each tick's lines).
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    capacity: usize,
) -> std::io::Result<(LineQueue, WriterGuard)> {
    let (lines, queued) = sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (finishing, finished) = sync_channel::<()>(0);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let (dropped, stop) = (dropped.clone(), stop.clone());
            move || {
                write_lines(queued, out, &dropped, &stop);
                drop(finishing);
            }
        })?;
    Ok((
        LineQueue { lines, dropped },
        WriterGuard {
            stop,
            thread: thread.thread().clone(),
            finished,
        },
    ))
}

fn write_lines<W: Write>(
    queued: Receiver<Vec<u8>>,
    mut out: W,
    dropped: &AtomicU64,
    stop: &AtomicBool,
) {
    // `dropped` counts from the start; the metric gets what is new since the last tick.
    let mut reported = 0;
    loop {
        // Read before draining: every line queued before the guard was dropped is drained by
        // the last round.
        let stopping = stop.load(Ordering::Acquire);
        let mut wrote = false;
        let gone = loop {
            match queued.try_recv() {
                // A failing destination costs its lines, never the process.
                Ok(line) => wrote |= out.write_all(&line).is_ok(),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let _ = out.flush();
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            metrics::counter!("log_lines_dropped_total").increment(lost - reported);
            reported = lost;
        }
        if stopping || gone {
            return;
        }
        std::thread::park_timeout(if wrote { BUSY_TICK } else { IDLE_TICK });
    }
}

impl Write for &LineQueue {
    /// tracing-subscriber hands over one whole formatted line per event.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match self.lines.try_send(line.to_vec()) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LineQueue {
    type Writer = &'a LineQueue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
        // Disconnected (the thread finished, or panicked) or timed out: either way, go on.
        let _ = self.finished.recv_timeout(FINAL_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A destination the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|b| b.clone()).unwrap_or_default())
                .unwrap_or_default()
        }
    }

    #[test]
    fn every_line_queued_before_the_guard_is_dropped_is_written_whole_and_in_order() {
        let out = Shared::default();
        let (queue, guard) = spawn(out.clone(), QUEUE_LINES).expect("writer thread");
        std::thread::scope(|s| {
            for t in 0..4 {
                let queue = &queue;
                s.spawn(move || {
                    for i in 0..5_000 {
                        let _ = queue
                            .make_writer()
                            .write_all(format!("{t} {i}\n").as_bytes());
                    }
                });
            }
        });
        drop(guard);
        let text = out.text();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').expect("a whole line");
            let (t, i): (usize, usize) = (t.parse().expect("thread"), i.parse().expect("index"));
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
    }

    #[test]
    fn lines_beyond_a_full_queue_are_dropped_and_counted_not_waited_for() {
        let out = Shared::default();
        let (queue, guard) = spawn(out.clone(), 10).expect("writer thread");
        // The destination is stuck (its lock held here), so the writer can take at most one
        // line off the queue of 10: the rest of the burst must be dropped, and a write that
        // waited for room would hang this test.
        let stuck = out.0.lock().expect("destination");
        for i in 0..1_000 {
            let _ = queue.make_writer().write_all(format!("{i}\n").as_bytes());
        }
        drop(stuck);
        let dropped = queue.dropped.load(Ordering::Relaxed);
        drop(guard);
        let written = out.text().lines().count() as u64;
        assert!(dropped >= 1_000 - 11, "only {dropped} dropped");
        assert_eq!(written + dropped, 1_000);
    }

    /// A destination whose `write` says when it was entered, then blocks until released.
    struct Blocking {
        entered: SyncSender<()>,
        release: Receiver<()>,
    }

    impl Write for Blocking {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_destination_that_never_takes_its_lines_does_not_keep_the_process_from_ending() {
        let (entered, writing) = sync_channel(1);
        let (released, release) = sync_channel::<()>(1);
        let (queue, guard) = spawn(Blocking { entered, release }, 10).expect("writer thread");
        let _ = queue.make_writer().write_all(b"a line\n");
        writing.recv().expect("the writer took the line");
        // The writer is stuck in the destination: the guard must still let the process end
        // (a drop that waited for the writer would hang this test).
        drop(guard);
        drop(released);
    }
}
