use std::sync::Arc;

use entity::{Money, stock};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme, auth::Bearer};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{ApiTags, problems, products::Product};
use crate::{
    AppState,
    error::{ApiError, ProblemCode, Problems},
    types::{Json, JsonBody, PRICE_PATTERN, is_price, within},
};

/// The operator's bearer token (`ADMIN_TOKEN`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminToken(Bearer);

/// A new product.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct NewProduct {
    /// 1 to 255 characters, not all spaces.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub name: String,
    /// Decimal string, at most two places, not negative (`"99.99"`).
    #[oai(validator(pattern = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"))]
    pub price: String,
    /// Units on hand.
    #[oai(validator(minimum(value = "0")))]
    pub stock: i32,
}

impl poem_openapi::types::Example for NewProduct {
    fn example() -> Self {
        Self {
            name: "Flash Sale Product".into(),
            price: "99.99".into(),
            stock: 100,
        }
    }
}

#[derive(ApiResponse)]
pub enum ProductCreated {
    /// The product is created, its whole stock available.
    #[oai(status = 201)]
    Created(
        Json<Product>,
        /// The new product's path.
        #[oai(header = "Location")]
        String,
    ),
}

problems!(CreateProductProblems = "createProduct": [
    MalformedRequest, Unauthorized, NotFound, PayloadTooLarge, UnsupportedMediaType,
    ValidationError, Internal, Unavailable,
]);

pub struct AdminApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Add a product (operators only)
    ///
    /// Needs the bearer token `ADMIN_TOKEN`; when the server has none set, this route answers
    /// 404 `not_found`.
    #[oai(
        path = "/api/admin/products",
        method = "post",
        operation_id = "createProduct"
    )]
    async fn create_product(
        &self,
        auth: AdminToken,
        body: JsonBody<NewProduct>,
    ) -> Result<ProductCreated, Problems<CreateProductProblems>> {
        self.authorize(&auth)?;
        // Limits are checked on the value as sent, the way the document states them.
        if !(1..=255).contains(&body.name.chars().count()) {
            return Err(ApiError::validation("name", "must be 1 to 255 characters").into());
        }
        let name = body.name.trim();
        if name.is_empty() {
            return Err(ApiError::validation("name", "must not be only spaces").into());
        }
        if !is_price(&body.price) {
            return Err(ApiError::validation(
                "price",
                format!("must be a decimal string matching {PRICE_PATTERN}, like \"99.99\""),
            )
            .into());
        }
        let price =
            Money::parse(&body.price).map_err(|e| ApiError::validation("price", e.to_string()))?;
        within("stock", i64::from(body.stock), 0, i64::from(i32::MAX))?;
        let product = stock::create_product(&self.state.db, name, price, body.stock).await?;
        let path = format!("/api/products/{}", product.id);
        Ok(ProductCreated::Created(Json(product.into()), path))
    }
}

impl AdminApi {
    fn authorize(&self, auth: &AdminToken) -> Result<(), ApiError> {
        let Some(expected) = &self.state.admin_token else {
            return Err(ApiError::new(ProblemCode::NotFound, "no such route"));
        };
        // Constant time, so the answer's timing says nothing about how much of a guess was right.
        if bool::from(auth.0.token.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ProblemCode::Unauthorized,
                "invalid admin token",
            ))
        }
    }
}
