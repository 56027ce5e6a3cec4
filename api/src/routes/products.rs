use std::sync::Arc;

use entity::stock::ProductView;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path};

use super::{ApiTags, problems};
use crate::{AppState, error::Problems, types::Json};

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
}

impl poem_openapi::types::Example for Product {
    fn example() -> Self {
        Self {
            id: 1,
            name: "Flash Sale Product".into(),
            price: "99.99".into(),
            stock: 100,
            available_stock: 98,
        }
    }
}

impl From<ProductView> for Product {
    fn from(p: ProductView) -> Self {
        Self {
            id: p.id,
            name: p.name,
            price: p.price.to_string(),
            stock: p.stock,
            available_stock: p.available_stock,
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
        let product = self.state.product_reads.product_view(id.0).await?;
        Ok(ProductFound::Ok(Json(product.into())))
    }
}
