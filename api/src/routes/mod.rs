//! The HTTP operations, grouped as they appear in the OpenAPI document. Handlers are thin:
//! parse, call one `entity::stock` operation, map its result.

pub mod admin;
pub mod holds;
pub mod products;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Products and their live stock.
    Products,
    /// Short reservations of stock.
    Holds,
    /// Operator-only routes (need `ADMIN_TOKEN`).
    Admin,
}

/// The operations of the generated document, in the order a reader meets them.
pub fn api(
    state: std::sync::Arc<crate::AppState>,
) -> (products::ProductsApi, holds::HoldsApi, admin::AdminApi) {
    (
        products::ProductsApi {
            state: state.clone(),
        },
        holds::HoldsApi {
            state: state.clone(),
        },
        admin::AdminApi { state },
    )
}
