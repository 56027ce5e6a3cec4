//! The granting rule of a hold batch, apart from the database: in arrival order, each request
//! is judged against what is left after the ones before it, and against its buyer's
//! `per_buyer_limit`.

use std::collections::HashMap;

use crate::DomainError;

/// One request of a batch, as the granting rule sees it.
#[derive(Debug)]
pub(crate) struct Ask<'a> {
    pub qty: i32,
    pub buyer: Option<&'a str>,
    /// Its caller has gone: it takes nothing and is answered nothing.
    pub withdrawn: bool,
    /// Refused before granting (its key taken, the sale window shut).
    pub refused: Option<DomainError>,
}

impl Ask<'_> {
    /// The units it asks for, unless it is set aside.
    pub fn wanted(&self) -> Option<i64> {
        (!self.withdrawn && self.refused.is_none()).then_some(i64::from(self.qty))
    }
}

/// What the rule decided for one request.
#[derive(Debug)]
pub(crate) enum Decision {
    Grant(i32),
    Refuse(DomainError),
    /// Its caller withdrew.
    Skip,
}

/// The granting rule of a batch, in arrival order: each request is judged against what is left
/// after the ones before it. With a per-buyer limit a request must name its buyer, and the
/// buyer's units (`used`: active holds and pending or paid orders before this batch, then the
/// grants of this batch as they are made) plus `qty` may not exceed the limit. Answers one
/// decision per request.
pub(crate) fn grant<'a>(
    mut available: i32,
    limit: Option<i32>,
    mut used: HashMap<&'a str, i32>,
    asks: impl IntoIterator<Item = Ask<'a>>,
) -> Vec<Decision> {
    asks.into_iter()
        .map(|ask| {
            if ask.withdrawn {
                return Decision::Skip;
            }
            if let Some(e) = ask.refused {
                return Decision::Refuse(e);
            }
            let buyer_units = match (limit, ask.buyer) {
                (None, _) => None,
                (Some(_), None) => return Decision::Refuse(DomainError::BuyerIdRequired),
                (Some(limit), Some(buyer)) => {
                    let units = used.entry(buyer).or_default();
                    if units.saturating_add(ask.qty) > limit {
                        let remaining = (limit - *units).max(0);
                        return Decision::Refuse(DomainError::BuyerLimitExceeded { remaining });
                    }
                    Some(units)
                }
            };
            if available < ask.qty {
                return Decision::Refuse(DomainError::InsufficientStock { available });
            }
            available -= ask.qty;
            if let Some(units) = buyer_units {
                *units += ask.qty;
            }
            Decision::Grant(ask.qty)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(qty: i32, buyer: Option<&str>) -> Ask<'_> {
        Ask {
            qty,
            buyer,
            withdrawn: false,
            refused: None,
        }
    }

    #[test]
    fn grants_in_arrival_order_while_stock_lasts() {
        let answers = grant(
            5,
            None,
            HashMap::new(),
            [ask(3, None), ask(3, None), ask(2, None)],
        );
        assert!(matches!(answers[0], Decision::Grant(3)));
        assert!(matches!(
            answers[1],
            Decision::Refuse(DomainError::InsufficientStock { available: 2 })
        ));
        assert!(
            matches!(answers[2], Decision::Grant(2)),
            "a later, smaller request still fits"
        );
    }

    #[test]
    fn counts_each_buyer_against_the_limit_within_the_batch_and_before_it() {
        let used = HashMap::from([("ann", 1)]);
        let answers = grant(
            100,
            Some(3),
            used,
            [
                ask(1, Some("ann")),
                ask(2, Some("ann")),
                ask(1, Some("bob")),
                ask(1, None),
                ask(3, Some("bob")),
            ],
        );
        assert!(matches!(answers[0], Decision::Grant(1)));
        assert!(matches!(
            answers[1],
            Decision::Refuse(DomainError::BuyerLimitExceeded { remaining: 1 })
        ));
        assert!(matches!(answers[2], Decision::Grant(1)));
        assert!(matches!(
            answers[3],
            Decision::Refuse(DomainError::BuyerIdRequired)
        ));
        assert!(matches!(
            answers[4],
            Decision::Refuse(DomainError::BuyerLimitExceeded { remaining: 2 })
        ));
    }

    #[test]
    fn a_withdrawn_or_refused_request_takes_nothing_and_a_limit_refusal_leaves_stock() {
        let mut gone = ask(4, None);
        gone.withdrawn = true;
        let mut closed = ask(4, Some("dee"));
        closed.refused = Some(DomainError::SaleEnded);
        let answers = grant(
            4,
            Some(2),
            HashMap::new(),
            [
                gone,
                closed,
                ask(3, Some("ann")),
                ask(2, Some("bob")),
                ask(2, Some("cy")),
            ],
        );
        assert!(matches!(answers[0], Decision::Skip));
        assert!(matches!(
            answers[1],
            Decision::Refuse(DomainError::SaleEnded)
        ));
        assert!(matches!(
            answers[2],
            Decision::Refuse(DomainError::BuyerLimitExceeded { remaining: 2 })
        ));
        assert!(matches!(answers[3], Decision::Grant(2)));
        assert!(matches!(answers[4], Decision::Grant(2)));
    }
}
