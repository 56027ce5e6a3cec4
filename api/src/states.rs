//! States clients see, as the document names them, used by more than one part of the API (a
//! ticket's state is in the ticket and in an `admission_required` problem).

use poem_openapi::Enum;

/// Where a queue ticket is (in an `admission_required` problem: the named ticket's): `waiting` (in line), `admitted` (may make one hold until
/// `admission_expires_at`), `used` (its admission made a hold), `expired` (admitted and not
/// used in time), `left` (its buyer left the queue) or `closed` (still waiting when the sale
/// ended or the stock ran out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum TicketState {
    Waiting,
    Admitted,
    Used,
    Expired,
    Left,
    Closed,
}

impl From<entity::TicketState> for TicketState {
    fn from(s: entity::TicketState) -> Self {
        use entity::TicketState as S;
        match s {
            S::Waiting => Self::Waiting,
            S::Admitted => Self::Admitted,
            S::Used => Self::Used,
            S::Expired => Self::Expired,
            S::Left => Self::Left,
            S::Closed => Self::Closed,
        }
    }
}
