//! The HTTP operations, grouped as they appear in the OpenAPI document. Handlers are thin:
//! parse, call one `entity` operation, map its result.

pub mod admin;
pub mod health;
pub mod holds;
pub mod orders;
pub mod payments;
pub mod products;
pub mod queue;
pub mod stream;

use poem_openapi::Tags;

use crate::error::{ProblemCode, ProblemSet};

/// The document's tags. The document lists them in a buyer's order (Products, Holds, Orders,
/// Payments, Admin, Operations): see [`crate::document::TAG_ORDER`].
#[derive(Tags)]
pub enum ApiTags {
    /// Products and their live stock.
    Products,
    /// Fair admission: a product's queue, which shuffles the crowd that came before the
    /// opening and admits buyers as stock allows.
    Queue,
    /// Short reservations of stock, made before an order.
    Holds,
    /// Holds turned into orders awaiting payment.
    Orders,
    /// The payment gateway's webhook.
    Payments,
    /// Operator-only routes (bearer `ADMIN_TOKEN`).
    Admin,
    /// Health checks, for load balancers and orchestrators.
    Operations,
}

/// Declares the problems one operation can answer (see [`ProblemSet`]).
macro_rules! problems {
    ($(#[$doc:meta])* $name:ident = $op:literal $(, keyed = $keyed:literal)?: [$($code:ident),* $(,)?]) => {
        $(#[$doc])*
        pub struct $name;
        impl $crate::error::ProblemSet for $name {
            const OPERATION: &'static str = $op;
            const CODES: &'static [$crate::error::ProblemCode] =
                &[$($crate::error::ProblemCode::$code),*];
            $(const KEYED: bool = $keyed;)?
        }
    };
}
pub(crate) use problems;

/// Every operation's problems, for the examples of the document.
pub fn problem_sets() -> Vec<(&'static str, &'static [ProblemCode])> {
    operations()
        .into_iter()
        .map(|(op, codes, _)| (op, codes))
        .collect()
}

/// The operations whose problem sets say they take an `Idempotency-Key`.
pub fn keyed_operations() -> Vec<&'static str> {
    operations()
        .into_iter()
        .filter_map(|(op, _, keyed)| keyed.then_some(op))
        .collect()
}

fn operations() -> Vec<(&'static str, &'static [ProblemCode], bool)> {
    fn entry<S: ProblemSet>() -> (&'static str, &'static [ProblemCode], bool) {
        (S::OPERATION, S::CODES, S::KEYED)
    }
    vec![
        entry::<products::GetProductProblems>(),
        entry::<holds::CreateHoldProblems>(),
        entry::<holds::GetHoldProblems>(),
        entry::<holds::ReleaseHoldProblems>(),
        entry::<holds::ExtendHoldProblems>(),
        entry::<orders::CreateOrderProblems>(),
        entry::<orders::GetOrderProblems>(),
        entry::<payments::WebhookProblems>(),
        entry::<admin::CreateProductProblems>(),
        entry::<admin::UpdateProductProblems>(),
        entry::<admin::ListOrdersProblems>(),
        entry::<admin::MarkRefundedProblems>(),
        entry::<products::ListProductsProblems>(),
        entry::<health::ReadyzProblems>(),
        entry::<stream::StreamStockProblems>(),
        entry::<queue::JoinQueueProblems>(),
        entry::<queue::GetTicketProblems>(),
        entry::<queue::LeaveQueueProblems>(),
        entry::<queue::StreamTicketProblems>(),
    ]
}

/// The operations of the generated document, in the order a reader meets them.
pub fn api(
    state: std::sync::Arc<crate::AppState>,
) -> (
    products::ProductsApi,
    queue::QueueApi,
    holds::HoldsApi,
    orders::OrdersApi,
    payments::PaymentsApi,
    admin::AdminApi,
    stream::StreamApi,
    health::HealthApi,
) {
    (
        products::ProductsApi {
            state: state.clone(),
        },
        queue::QueueApi {
            state: state.clone(),
        },
        holds::HoldsApi {
            state: state.clone(),
        },
        orders::OrdersApi {
            state: state.clone(),
        },
        payments::PaymentsApi {
            state: state.clone(),
        },
        admin::AdminApi {
            state: state.clone(),
        },
        stream::StreamApi {
            state: state.clone(),
        },
        health::HealthApi { state },
    )
}
