//! The HTTP operations, grouped as they appear in the OpenAPI document. Handlers are thin:
//! parse, call one `entity::stock` operation, map its result.

pub mod admin;
pub mod holds;
pub mod orders;
pub mod payments;
pub mod products;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Products and their live stock.
    Products,
    /// Short reservations of stock.
    Holds,
    /// Holds turned into orders awaiting payment.
    Orders,
    /// The payment gateway's webhook.
    Payments,
    /// Operator-only routes (need `ADMIN_TOKEN`).
    Admin,
}

/// The operations of the generated document, in the order a reader meets them.
pub fn api(
    state: std::sync::Arc<crate::AppState>,
) -> (
    products::ProductsApi,
    holds::HoldsApi,
    orders::OrdersApi,
    payments::PaymentsApi,
    admin::AdminApi,
) {
    (
        products::ProductsApi {
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
        admin::AdminApi { state },
    )
}
