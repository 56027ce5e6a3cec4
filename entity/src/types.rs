//! Small validated types that keep quantities, money and ids from being mixed up.

use std::fmt;

use rust_decimal::Decimal;
use sea_orm::DeriveValueType;

/// Declares an id type: the row id of one table, a column type of its own (SeaORM's
/// `DeriveValueType`), so a hold's id is never passed where a product's is expected. Made from
/// and read as the plain integer only at the edges (HTTP, SQL text, logs).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, DeriveValueType,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub const fn new(id: i64) -> Self {
                Self(id)
            }

            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A product's id (`products.id`).
    ProductId
);
id_type!(
    /// A hold's id (`holds.id`).
    HoldId
);
id_type!(
    /// An order's id (`orders.id`).
    OrderId
);
id_type!(
    /// A queue ticket's id (`queue_tickets.id`).
    TicketId
);

/// A positive number of units (at least 1). The upper bound is a setting, checked by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    /// `None` unless `1 <= n <= max`.
    pub fn new(n: i64, max: u32) -> Option<Self> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .map(Self)
    }

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_i32(self) -> i32 {
        // Bounded by `max`, which is a u32 setting far below i32::MAX in practice; saturate anyway.
        i32::try_from(self.0).unwrap_or(i32::MAX)
    }
}

/// The buyer a hold is for: 1 to 128 characters, no control characters, compared exactly. Opaque
/// to this service (a frontend's user or session id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuyerId(String);

impl BuyerId {
    pub const MAX_CHARS: usize = 128;

    /// `None` unless 1 to 128 characters and none of them a control character.
    pub fn parse(s: &str) -> Option<Self> {
        let chars = s.chars().count();
        ((1..=Self::MAX_CHARS).contains(&chars) && !s.chars().any(char::is_control))
            .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An amount of money with exactly two decimal places, stored as integer cents so that no
/// database (SQLite has no decimal type) ever sees a float.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Money {
    cents: i64,
}

/// Why a string is not a valid price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not a decimal number")]
    NotDecimal,
    #[error("must not be negative")]
    Negative,
    #[error("must have at most two decimal places")]
    TooPrecise,
    #[error("is too large")]
    TooLarge,
}

/// The largest accepted price: 10^12 - 0.01, far beyond any flash sale and safe to multiply by
/// any quantity without overflowing i64 cents.
const MAX_CENTS: i64 = 99_999_999_999_999;

impl Money {
    pub fn from_cents(cents: i64) -> Self {
        Self { cents }
    }

    pub fn cents(self) -> i64 {
        self.cents
    }

    /// Parses a price: a decimal string such as `"99.99"` or `"5"`, exactly (through
    /// `rust_decimal`), at most 999,999,999,999.99.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        Self::parse_up_to(s, MAX_CENTS)
    }

    /// Parses an amount that may be a total of many units (a webhook's `amount`): any number
    /// of cents that fits.
    pub fn parse_amount(s: &str) -> Result<Self, MoneyError> {
        Self::parse_up_to(s, i64::MAX)
    }

    fn parse_up_to(s: &str, max_cents: i64) -> Result<Self, MoneyError> {
        let d: Decimal = s.trim().parse().map_err(|_| MoneyError::NotDecimal)?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(MoneyError::Negative);
        }
        if d.normalize().scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let cents = (d * Decimal::ONE_HUNDRED)
            .trunc()
            .try_into()
            .map_err(|_| MoneyError::TooLarge)?;
        if cents > max_cents {
            return Err(MoneyError::TooLarge);
        }
        Ok(Self { cents })
    }

    /// The price of `qty` units, exact; `None` when it would not fit (never a saturated,
    /// wrong total).
    pub fn times(self, qty: u32) -> Option<Self> {
        self.cents
            .checked_mul(i64::from(qty))
            .map(|cents| Self { cents })
    }

    /// The sum of two amounts, exact; `None` when it would not fit.
    pub fn plus(self, other: Money) -> Option<Self> {
        self.cents
            .checked_add(other.cents)
            .map(|cents| Self { cents })
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.cents, 2)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Decimal::new(cents, 2) keeps scale 2, so 100 cents prints "1.00".
        write!(f, "{}", self.to_decimal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trips_two_places() {
        assert_eq!(Money::parse("99.99").unwrap().to_string(), "99.99");
        assert_eq!(Money::parse("5").unwrap().to_string(), "5.00");
        assert_eq!(Money::parse("0.1").unwrap().cents(), 10);
        assert_eq!(
            Money::parse("1.50")
                .unwrap()
                .times(3)
                .map(|m| m.to_string()),
            Some("4.50".into())
        );
        assert_eq!(Money::parse("0.10000").unwrap().cents(), 10);
    }

    #[test]
    fn totals_that_would_not_fit_are_refused_not_saturated() {
        let largest = Money::parse("999999999999.99").unwrap();
        assert_eq!(
            largest.times(1_000).map(Money::cents),
            Some(99_999_999_999_999_000)
        );
        assert_eq!(largest.times(1_000_000), None);
        assert_eq!(Money::from_cents(i64::MAX).times(2), None);
        assert_eq!(
            Money::from_cents(i64::MAX).times(1),
            Some(Money::from_cents(i64::MAX))
        );
    }

    #[test]
    fn money_rejects_bad_values() {
        assert_eq!(Money::parse("abc"), Err(MoneyError::NotDecimal));
        assert_eq!(Money::parse("-1"), Err(MoneyError::Negative));
        assert_eq!(Money::parse("1.001"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("1000000000000000"), Err(MoneyError::TooLarge));
    }

    #[test]
    fn buyer_ids_are_short_printable_and_exact() {
        assert_eq!(
            BuyerId::parse("user-42").map(BuyerId::into_string),
            Some("user-42".into())
        );
        assert!(BuyerId::parse(&"é".repeat(128)).is_some());
        assert!(BuyerId::parse(&"b".repeat(129)).is_none());
        assert!(BuyerId::parse("").is_none());
        assert!(BuyerId::parse("tab\there").is_none());
        assert!(BuyerId::parse("nul\u{0}").is_none());
        assert_ne!(BuyerId::parse("Ann"), BuyerId::parse("ann"));
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::new(0, 10).is_none());
        assert!(Quantity::new(-1, 10).is_none());
        assert!(Quantity::new(11, 10).is_none());
        assert!(Quantity::new(i64::MAX, 10).is_none());
        assert_eq!(Quantity::new(10, 10).map(Quantity::get), Some(10));
    }
}
