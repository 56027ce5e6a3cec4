use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    Money,
    operations::orders,
    operations::products::{self, ProductChange, SaleRules},
    types::{OrderId, ProductId},
};
use poem_openapi::{
    ApiResponse, Object, OpenApi, SecurityScheme,
    auth::Bearer,
    param::{Path, Query},
};
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

use super::{
    ApiTags,
    orders::Order,
    problems,
    products::{AdmissionMode, Product, next_after, page_bounds},
};
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
    /// Most units one buyer may hold or buy; leave out (or null) for no limit.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "1")))]
    #[serde(default)]
    pub per_buyer_limit: Option<i32>,
    /// When holds start to be served (RFC 3339); leave out (or null) to sell at once.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// When holds stop being served (RFC 3339), after `sale_starts_at`; leave out (or null) for
    /// no end.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub sale_ends_at: Option<DateTime<Utc>>,
    // `queue` admits buyers through the product's queue; left out: `open` (`null` is refused:
    // OpenAPI 3.0 cannot make a `$ref` nullable). Said by `AdmissionMode` itself: a description
    // here would wrap the `$ref` in `allOf`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "not_null")]
    pub admission: Option<AdmissionMode>,
    /// With `queue` admission: seconds an admitted buyer has to make a hold, 1 to 86400;
    /// leave out (or null) for 120.
    #[oai(
        skip_serializing_if_is_none,
        validator(minimum(value = "1"), maximum(value = "86400"))
    )]
    #[serde(default)]
    pub admission_window_seconds: Option<i32>,
}

impl poem_openapi::types::Example for NewProduct {
    fn example() -> Self {
        Self {
            name: "Flash Sale Product".into(),
            price: "99.99".into(),
            stock: 100,
            per_buyer_limit: Some(2),
            sale_starts_at: None,
            sale_ends_at: None,
            admission: None,
            admission_window_seconds: None,
        }
    }
}

/// A change to a product: a member left out stays as it is; `null` clears a nullable one.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct ProductPatch {
    /// 1 to 255 characters, not all spaces.
    #[oai(
        skip_serializing_if_is_none,
        validator(min_length = 1, max_length = 255)
    )]
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    /// Decimal string, at most two places, not negative (`"99.99"`).
    #[oai(
        skip_serializing_if_is_none,
        validator(pattern = r"^[0-9]{1,12}(\.[0-9]{1,2})?$")
    )]
    #[serde(default, deserialize_with = "not_null")]
    pub price: Option<String>,
    /// Units added to `stock` and `available_stock` together (negative: taken away). Units
    /// that are held or in pending orders cannot be taken away: 409 `insufficient_stock`,
    /// with `available`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "not_null")]
    pub add_stock: Option<i32>,
    /// Most units one buyer may hold or buy, at least 1; `null` removes the limit.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "1")))]
    #[serde(default, deserialize_with = "present")]
    pub per_buyer_limit: Option<Option<i32>>,
    /// When holds start to be served; `null` opens the sale now.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "present")]
    pub sale_starts_at: Option<Option<DateTime<Utc>>>,
    /// When holds stop being served, after the start (as changed here or as stored); `null`
    /// removes the end.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "present")]
    pub sale_ends_at: Option<Option<DateTime<Utc>>>,
    // `queue` or `open`; back to `open`, the queue's waiting tickets are closed within about a
    // second (said in `updateProduct`'s description: a description here would be `allOf`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, deserialize_with = "not_null")]
    pub admission: Option<AdmissionMode>,
    /// Seconds an admitted buyer has to make a hold, 1 to 86400 (for admissions from now on).
    #[oai(
        skip_serializing_if_is_none,
        validator(minimum(value = "1"), maximum(value = "86400"))
    )]
    #[serde(default, deserialize_with = "not_null")]
    pub admission_window_seconds: Option<i32>,
}

/// A member that may be left out but, when sent, must not be `null` (there is nothing to clear):
/// `null` is refused like a missing required field.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A member that is present, `null` included (`Some(None)`); an absent one stays `None`
/// through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl poem_openapi::types::Example for ProductPatch {
    /// Restocks the demo product by 50 and limits it to 2 units per buyer.
    fn example() -> Self {
        Self {
            name: None,
            price: None,
            add_stock: Some(50),
            per_buyer_limit: Some(Some(2)),
            sale_starts_at: None,
            sale_ends_at: None,
            admission: None,
            admission_window_seconds: None,
        }
    }
}

#[derive(ApiResponse)]
pub enum ProductUpdated {
    /// The product after the change.
    #[oai(status = 200)]
    Ok(Json<Product>),
}

/// One page of orders, by id ascending.
#[derive(Debug, Object)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<i64>,
}

#[derive(ApiResponse)]
pub enum OrdersListed {
    /// A page of orders.
    #[oai(status = 200)]
    Ok(Json<OrderPage>),
}

#[derive(ApiResponse)]
pub enum OrderRefunded {
    /// The order, its refund recorded (`refund_required: false`).
    #[oai(status = 200)]
    Ok(Json<Order>),
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
problems!(UpdateProductProblems = "updateProduct": [
    MalformedRequest, Unauthorized, NotFound, ProductNotFound, InsufficientStock,
    PayloadTooLarge, UnsupportedMediaType, ValidationError, Internal, Unavailable,
]);
problems!(ListOrdersProblems = "listOrders": [
    MalformedRequest, Unauthorized, NotFound, ValidationError, Internal, Unavailable,
]);
problems!(MarkRefundedProblems = "markRefunded": [
    MalformedRequest, Unauthorized, NotFound, OrderNotFound, NoRefundDue, Internal, Unavailable,
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
        let name = checked_name(&body.name)?;
        let price = checked_price(&body.price, self.state.max_hold_qty)?;
        within("stock", i64::from(body.stock), 0, i64::from(i32::MAX))?;
        let rules = SaleRules {
            sale_starts_at: body.sale_starts_at,
            sale_ends_at: body.sale_ends_at,
            per_buyer_limit: body.per_buyer_limit,
            admission: body.admission.map_or(entity::Admission::Open, Into::into),
            admission_window_seconds: body
                .admission_window_seconds
                .unwrap_or(products::DEFAULT_ADMISSION_WINDOW_SECONDS),
        };
        let product =
            products::create_product(&self.state.db, name, price, body.stock, rules).await?;
        let path = format!("/api/products/{}", product.id);
        Ok(ProductCreated::Created(Json(product.into()), path))
    }

    /// Change a product (operators only)
    ///
    /// Restock or take stock away (`add_stock`), rename, reprice, set or clear the sale window
    /// and the per-buyer limit, switch `admission` (back to `open`, the queue's waiting tickets
    /// are closed within about a second), all under the product's lock while the sale runs.
    /// Members left out stay as they are.
    #[oai(
        path = "/api/admin/products/:id",
        method = "patch",
        operation_id = "updateProduct"
    )]
    async fn update_product(
        &self,
        auth: AdminToken,
        /// The product's id.
        id: Path<i64>,
        body: JsonBody<ProductPatch>,
    ) -> Result<ProductUpdated, Problems<UpdateProductProblems>> {
        self.authorize(&auth)?;
        let change = ProductChange {
            name: body
                .name
                .as_deref()
                .map(checked_name)
                .transpose()?
                .map(str::to_owned),
            price: body
                .price
                .as_deref()
                .map(|p| checked_price(p, self.state.max_hold_qty))
                .transpose()?,
            add_stock: body.add_stock,
            sale_starts_at: body.sale_starts_at,
            sale_ends_at: body.sale_ends_at,
            per_buyer_limit: body.per_buyer_limit,
            admission: body.admission.map(Into::into),
            admission_window_seconds: body.admission_window_seconds,
        };
        let product =
            products::update_product(&self.state.db, ProductId::new(id.0), &change).await?;
        Ok(ProductUpdated::Ok(Json(product.into())))
    }

    /// List orders (operators only)
    ///
    /// By id ascending, in pages; `refund_required=true` lists the orders whose payment is owed
    /// back (paid for after they were cancelled and their units sold).
    #[oai(
        path = "/api/admin/orders",
        method = "get",
        operation_id = "listOrders"
    )]
    async fn list_orders(
        &self,
        auth: AdminToken,
        /// Only orders with this refund mark.
        refund_required: Query<Option<bool>>,
        /// Orders per page, 1 to 100 (default 20).
        limit: Query<Option<i64>>,
        /// Only orders with ids greater than this (default 0).
        after: Query<Option<i64>>,
    ) -> Result<OrdersListed, Problems<ListOrdersProblems>> {
        self.authorize(&auth)?;
        let (limit, after) = page_bounds(limit.0, after.0)?;
        let (items, more) = orders::list_orders(
            &self.state.db,
            refund_required.0,
            OrderId::new(after),
            limit,
        )
        .await?;
        let next = next_after(items.last().map(|o| o.id.get()), more);
        Ok(OrdersListed::Ok(Json(OrderPage {
            items: items.into_iter().map(Order::from).collect(),
            next,
        })))
    }

    /// Record that an order's payment was refunded (operators only)
    ///
    /// Clears `refund_required`. An order with no refund due answers 409 `no_refund_due`.
    #[oai(
        path = "/api/admin/orders/:id/refunded",
        method = "post",
        operation_id = "markRefunded"
    )]
    async fn mark_refunded(
        &self,
        auth: AdminToken,
        /// The order's id.
        id: Path<i64>,
    ) -> Result<OrderRefunded, Problems<MarkRefundedProblems>> {
        self.authorize(&auth)?;
        let order = orders::mark_refunded(&self.state.db, OrderId::new(id.0)).await?;
        Ok(OrderRefunded::Ok(Json(order.into())))
    }
}

/// A product name as sent: 1 to 255 characters, not only spaces; answered trimmed.
fn checked_name(name: &str) -> Result<&str, ApiError> {
    // Limits are checked on the value as sent, the way the document states them.
    if !(1..=255).contains(&name.chars().count()) {
        return Err(ApiError::validation("name", "must be 1 to 255 characters"));
    }
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(ApiError::validation("name", "must not be only spaces"));
    }
    Ok(trimmed)
}

/// A price as sent, refused when the largest hold (`MAX_HOLD_QTY` units) could not be totalled
/// exactly: a total is never stored to overflow later.
fn checked_price(price: &str, max_hold_qty: u32) -> Result<Money, ApiError> {
    if !is_price(price) {
        return Err(ApiError::validation(
            "price",
            format!("must be a decimal string matching {PRICE_PATTERN}, like \"99.99\""),
        ));
    }
    let money = Money::parse(price).map_err(|e| ApiError::validation("price", e.to_string()))?;
    if money.times(max_hold_qty).is_none() {
        return Err(ApiError::validation(
            "price",
            format!("is too large: {max_hold_qty} units (MAX_HOLD_QTY) would not total exactly"),
        ));
    }
    Ok(money)
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
