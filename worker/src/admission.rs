//! One admission run: every queue with work in it gets an admission pass
//! (`entity::operations::queue::admit`): the draw at its opening, admissions as stock allows,
//! admissions past their window expired, the waiting closed after the sale. Runs every second,
//! so a unit that comes back admits the next buyer within about a second; any number of
//! workers may run it (each pass holds the product's lock).

use entity::{Db, DomainError, operations::queue};
use tokio::sync::watch;

/// The schedule of admission runs: every second (a cron expression with a seconds field).
pub const ADMISSION_SCHEDULE: &str = "* * * * * *";

/// What one run did, over all queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionReport {
    pub queues: usize,
    pub drawn: usize,
    pub admitted: usize,
    pub expired: usize,
    pub closed: usize,
}

/// One run over every queue with work in it, one pass each, until `stop` says to finish. A
/// queue whose pass fails is left for the next run; the others still get theirs.
pub async fn admit_queues(
    db: &Db,
    stop: &watch::Receiver<bool>,
) -> Result<AdmissionReport, DomainError> {
    let mut report = AdmissionReport::default();
    for product_id in queue::queues_to_admit(db).await? {
        if *stop.borrow() {
            break;
        }
        match queue::admit(db, product_id).await {
            Ok(pass) => {
                report.queues += 1;
                report.drawn += pass.drawn;
                report.admitted += pass.admitted.len();
                report.expired += pass.expired.len();
                report.closed += pass.closed.len();
            }
            Err(e) => {
                let product = product_id.get().to_string();
                metrics::counter!("queue_admission_failures_total", "product_id" => product)
                    .increment(1);
                tracing::warn!(product_id = product_id.get(), error = %e, "admission pass failed; the next run retries");
            }
        }
    }
    metrics::counter!("queue_admission_runs_total").increment(1);
    Ok(report)
}
