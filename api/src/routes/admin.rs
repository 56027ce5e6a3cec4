use std::sync::Arc;

use entity::{Money, stock};
use poem::http::StatusCode;
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme, auth::Bearer, payload::Json};
use subtle::ConstantTimeEq;

use super::{ApiTags, products::Product};
use crate::{AppState, error::ApiError, types::Text};

/// The operator's bearer token (`ADMIN_TOKEN`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminToken(Bearer);

/// A new product.
#[derive(Debug, Object)]
#[oai(example)]
pub struct NewProduct {
    /// 1 to 255 characters.
    pub name: Text,
    /// Decimal string, at most two places, not negative (`"99.99"`).
    pub price: Text,
    /// Units on hand, 0 or more.
    pub stock: i64,
}

impl poem_openapi::types::Example for NewProduct {
    fn example() -> Self {
        Self {
            name: Text("Flash Sale Product".into()),
            price: Text("99.99".into()),
            stock: 100,
        }
    }
}

#[derive(Debug, ApiResponse)]
pub enum ProductCreated {
    #[oai(status = 201)]
    Created(Json<Product>),
}

pub struct AdminApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Add a product (operators only). Answers 404 when `ADMIN_TOKEN` is not set.
    #[oai(
        path = "/api/admin/products",
        method = "post",
        operation_id = "createProduct"
    )]
    async fn create_product(
        &self,
        auth: AdminToken,
        body: Json<NewProduct>,
    ) -> Result<ProductCreated, ApiError> {
        self.authorize(&auth)?;
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 255 {
            return Err(ApiError::validation("name must be 1 to 255 characters"));
        }
        let price =
            Money::parse(&body.price).map_err(|e| ApiError::validation(format!("price {e}")))?;
        let stock = i32::try_from(body.stock)
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| ApiError::validation("stock must be between 0 and 2147483647"))?;
        let product = stock::create_product(&self.state.db, name, price, stock).await?;
        Ok(ProductCreated::Created(Json(product.into())))
    }
}

impl AdminApi {
    fn authorize(&self, auth: &AdminToken) -> Result<(), ApiError> {
        let Some(expected) = &self.state.admin_token else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ));
        };
        // Constant time, so the answer's timing says nothing about how much of a guess was right.
        if bool::from(auth.0.token.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid admin token",
            ))
        }
    }
}
