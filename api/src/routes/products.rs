use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    operations::products::{self, ProductView},
    types::ProductId,
};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
};

use super::{ApiTags, problems};
use crate::{
    AppState,
    error::Problems,
    types::{Json, within},
};

/// How buyers reach a product's stock: `open` (anyone may hold, first come first served; the
/// default) or `queue` (a hold needs the buyer's admitted ticket from the product's queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    Open,
    Queue,
}

impl From<entity::Admission> for AdmissionMode {
    fn from(a: entity::Admission) -> Self {
        match a {
            entity::Admission::Open => Self::Open,
            entity::Admission::Queue => Self::Queue,
        }
    }
}

impl From<AdmissionMode> for entity::Admission {
    fn from(a: AdmissionMode) -> Self {
        match a {
            AdmissionMode::Open => Self::Open,
            AdmissionMode::Queue => Self::Queue,
        }
    }
}

/// A product and its live stock.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Product {
    pub id: i64,
    pub name: String,
    /// Decimal string with two places, exact.
    #[oai(validator(pattern = r"^[0-9]{1,12}\.[0-9]{2}$"))]
    pub price: String,
    /// Units on hand, not yet sold; drops only when an order is paid.
    #[oai(validator(minimum(value = "0")))]
    pub stock: i32,
    /// What can still be held: `stock` minus active holds minus pending orders. Expired holds
    /// never count, even before the worker has swept them.
    #[oai(validator(minimum(value = "0")))]
    pub available_stock: i32,
    /// Most units one buyer may hold or buy (active holds plus pending and paid orders); null:
    /// no limit. Holds on a limited product must name `buyer_id`.
    #[oai(validator(minimum(value = "1")))]
    pub per_buyer_limit: Option<i32>,
    /// Holds before this moment answer 409 `sale_not_started` (RFC 3339, UTC); null: on sale.
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// Holds at or after this moment answer 409 `sale_ended`; null: no end. Holds made before
    /// it can still become orders and be paid after it.
    pub sale_ends_at: Option<DateTime<Utc>>,
    // Described by `AdmissionMode` itself: a description here would wrap the `$ref` in `allOf`.
    pub admission: AdmissionMode,
    /// With `queue` admission: how long an admitted buyer has to make a hold, in seconds.
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub admission_window_seconds: i32,
}

impl poem_openapi::types::Example for Product {
    fn example() -> Self {
        Self {
            id: 1,
            name: "Flash Sale Product".into(),
            price: "99.99".into(),
            stock: 100,
            available_stock: 98,
            per_buyer_limit: None,
            sale_starts_at: None,
            sale_ends_at: None,
            admission: AdmissionMode::Open,
            admission_window_seconds: 120,
        }
    }
}

impl From<ProductView> for Product {
    fn from(p: ProductView) -> Self {
        Self {
            id: p.id.get(),
            name: p.name,
            price: p.price.to_string(),
            stock: p.stock,
            available_stock: p.available_stock,
            per_buyer_limit: p.rules.per_buyer_limit,
            sale_starts_at: p.rules.sale_starts_at,
            sale_ends_at: p.rules.sale_ends_at,
            admission: p.rules.admission.into(),
            admission_window_seconds: p.rules.admission_window_seconds,
        }
    }
}

#[derive(ApiResponse)]
pub enum ProductFound {
    /// The product, as of a read that started after the request arrived.
    #[oai(status = 200)]
    Ok(Json<Product>),
}

problems!(GetProductProblems = "getProduct": [MalformedRequest, ProductNotFound, Internal, Unavailable]);
problems!(ListProductsProblems = "listProducts": [MalformedRequest, ValidationError, Internal, Unavailable]);

/// One page of products, by id ascending.
#[derive(Debug, Object)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<i64>,
}

#[derive(ApiResponse)]
pub enum ProductsListed {
    /// A page of the catalogue.
    #[oai(status = 200)]
    Ok(Json<ProductPage>),
}

/// The paging parameters shared by the catalogue and the operators' order list: `limit` 1 to
/// 100 (default 20), `after` an id ≥ 0 (default 0).
pub fn page_bounds(
    limit: Option<i64>,
    after: Option<i64>,
) -> Result<(u64, i64), crate::error::ApiError> {
    let limit = limit.unwrap_or(20);
    within("limit", limit, 1, 100)?;
    let after = after.unwrap_or(0);
    within("after", after, 0, i64::MAX)?;
    Ok((u64::try_from(limit).unwrap_or(20), after))
}

/// `next` of a page: its last id when more may follow.
pub fn next_after(last: Option<i64>, more: bool) -> Option<i64> {
    if more { last } else { None }
}

pub struct ProductsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Products")]
impl ProductsApi {
    /// Get a product with its live available stock
    ///
    /// Every answer reflects a database read that started after the request arrived.
    #[oai(
        path = "/api/products/:id",
        method = "get",
        operation_id = "getProduct"
    )]
    async fn get_product(
        &self,
        /// The product's id.
        id: Path<i64>,
    ) -> Result<ProductFound, Problems<GetProductProblems>> {
        let product = self
            .state
            .product_reads
            .product_view(ProductId::new(id.0))
            .await?;
        Ok(ProductFound::Ok(Json(product.into())))
    }

    /// List products
    ///
    /// By id ascending, in pages: pass the page's `next` as `after` for the next one.
    #[oai(path = "/api/products", method = "get", operation_id = "listProducts")]
    async fn list_products(
        &self,
        /// Products per page, 1 to 100 (default 20).
        limit: Query<Option<i64>>,
        /// Only products with ids greater than this (default 0).
        after: Query<Option<i64>>,
    ) -> Result<ProductsListed, Problems<ListProductsProblems>> {
        let (limit, after) = page_bounds(limit.0, after.0)?;
        let (items, more) =
            products::list_products(&self.state.db, ProductId::new(after), limit).await?;
        let next = next_after(items.last().map(|p| p.id.get()), more);
        Ok(ProductsListed::Ok(Json(ProductPage {
            items: items.into_iter().map(Product::from).collect(),
            next,
        })))
    }
}
