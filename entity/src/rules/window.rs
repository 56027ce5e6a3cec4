//! The sale window of a product: when holds are served.

use chrono::{DateTime, Utc};

use crate::{DomainError, product};

/// A product's sale window seen at `now`: the refusal for every hold, or none. Judged in the
/// hold's transaction, under the product lock, with the server's clock.
pub(crate) fn refusal(product: &product::Model, now: DateTime<Utc>) -> Option<DomainError> {
    refusal_of(product.sale_starts_at, product.sale_ends_at, now)
}

/// [`refusal`] for a window given by its ends.
pub(crate) fn refusal_of(
    sale_starts_at: Option<DateTime<Utc>>,
    sale_ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DomainError> {
    match (sale_starts_at, sale_ends_at) {
        (Some(starts_at), _) if now < starts_at => Some(DomainError::SaleNotStarted { starts_at }),
        (_, Some(ends_at)) if now >= ends_at => Some(DomainError::SaleEnded),
        _ => None,
    }
}
