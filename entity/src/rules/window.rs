//! The sale window of a product: when holds are served.

use chrono::{DateTime, Utc};

use crate::{DomainError, product};

/// A product's sale window seen at `now`: the refusal for every hold, or none. Judged in the
/// hold's transaction, under the product lock, with the server's clock.
pub(crate) fn refusal(product: &product::Model, now: DateTime<Utc>) -> Option<DomainError> {
    match (product.sale_starts_at, product.sale_ends_at) {
        (Some(starts_at), _) if now < starts_at => Some(DomainError::SaleNotStarted { starts_at }),
        (_, Some(ends_at)) if now >= ends_at => Some(DomainError::SaleEnded),
        _ => None,
    }
}
