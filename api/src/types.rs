//! The JSON payloads of the API: answers served as plain `application/json`, and request bodies
//! parsed strictly, with errors that name the field to blame.

use poem::{FromRequest, IntoResponse, Request, RequestBody, Response, http::StatusCode};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions,
    error::ContentTypeError,
    payload::{ParsePayload, Payload},
    registry::{MetaMediaType, MetaRequest, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};
use serde::de::DeserializeOwned;

// One-way: this module builds its refusals from `error`'s types; `error` knows nothing of it.
use crate::error::{ApiError, BodyError, ProblemCode};

/// The media type of every JSON body, requests and answers alike. poem-openapi's own `Json`
/// says `application/json; charset=utf-8`, a key generated clients do not recognise as JSON
/// (openapi-typescript's `SuccessResponseJSON` and friends resolve to `never`).
pub const JSON: &str = "application/json";

fn is_json(content_type: &str) -> bool {
    matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
        && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
}

/// A JSON answer, `application/json`.
pub struct Json<T>(pub T);

impl<T: Type> Payload for Json<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ToJSON> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .status(StatusCode::OK)
            .content_type(JSON)
            .body(self.0.to_json_string())
    }
}

impl<T: ToJSON> ApiResponse for Json<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "OK",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: JSON,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// A JSON request body: the schema comes from `T`'s `Object` derive, the parsing from its
/// serde `Deserialize` (strict: `"1"` is not an integer, `1.5` is not an integer, `1` is not a
/// string), so that every refusal names its field. The raw bytes are kept for the webhook's
/// signature, which is over the exact bytes sent.
pub struct JsonBody<T> {
    pub raw: Vec<u8>,
    pub value: T,
}

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let raw = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        let value = parse_body(&raw)?;
        Ok(Self { raw, value })
    }
}

impl<'a, T: Type + DeserializeOwned> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: JSON,
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if is_json(ct) => <Self as ParsePayload>::from_request(request, body).await,
            Some(ct) => Err(ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into()),
            None => Err(ContentTypeError::ExpectContentType.into()),
        }
    }
}

/// A JSON request body read but not yet parsed: for a body that must be authenticated (the
/// webhook's signature is over its exact bytes) before anything reads it. Documented as `T`.
pub struct UnparsedJson<T> {
    pub raw: Vec<u8>,
    _of: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> UnparsedJson<T> {
    /// The body, parsed as [`JsonBody`] parses it.
    pub fn parse(&self) -> Result<T, ApiError> {
        parse_body(&self.raw).map_err(|e| match e.field {
            Some(field) => ApiError::field(e.code, &field, e.message),
            None => ApiError::new(e.code, e.message),
        })
    }
}

impl<'a, T: Type + DeserializeOwned> ApiExtractor<'a> for UnparsedJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        <JsonBody<T> as ApiExtractor>::request_meta()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if is_json(ct) => Ok(Self {
                raw: <Vec<u8> as FromRequest>::from_request(request, body).await?,
                _of: std::marker::PhantomData,
            }),
            Some(ct) => Err(ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into()),
            None => Err(ContentTypeError::ExpectContentType.into()),
        }
    }
}

/// Parses a body, sorting serde's refusals the contract's way: not JSON, a missing or null
/// field, or a value of the wrong type is 400 `malformed_request`; a value of the right type
/// that no field may hold (an unknown `status`, an integer beyond 32 bits) is 422
/// `validation_error`.
pub fn parse_body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, BodyError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError {
            code: ProblemCode::MalformedRequest,
            field: None,
            message: "the body is empty; a JSON object is expected".into(),
        });
    }
    // serde reads a struct from an array too (`[1, 2]`); the document says object.
    let first = raw.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Ok(_) => "the body must be a JSON object".to_owned(),
            Err(e) => format!("not valid JSON: {e}"),
        };
        return Err(BodyError {
            code: ProblemCode::MalformedRequest,
            field: None,
            message,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| refusal(&e))?;
    de.end().map_err(|e| BodyError {
        code: ProblemCode::MalformedRequest,
        field: None,
        message: format!("not valid JSON: {e}"),
    })?;
    Ok(value)
}

fn refusal(e: &serde_path_to_error::Error<serde_json::Error>) -> BodyError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return BodyError {
            code: ProblemCode::MalformedRequest,
            field: None,
            message: format!("not valid JSON: {inner}"),
        };
    }
    // serde's messages, less serde_json's position suffix: `missing field `qty``,
    // `invalid type: null, expected i64`, `invalid value: integer `1e10`, expected i32`,
    // `unknown variant `paid`, expected `success` or `failure``.
    let text = inner.to_string();
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m)
        .to_owned();
    let path = e.path().to_string();
    let at = |name: &str| match path.as_str() {
        "." | "" => name.to_owned(),
        parent => format!("{parent}.{name}"),
    };
    let here = (path != ".").then(|| path.clone());
    if let Some(name) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return BodyError {
            code: ProblemCode::MalformedRequest,
            field: Some(at(name)),
            message: "missing field".into(),
        };
    }
    let (code, message) = if text.starts_with("invalid type: null") {
        (ProblemCode::MalformedRequest, "must not be null".to_owned())
    } else if text.starts_with("invalid value:") || text.starts_with("unknown variant") {
        (ProblemCode::ValidationError, text)
    } else if here.is_none() && text.starts_with("invalid type:") {
        (
            ProblemCode::MalformedRequest,
            "the body must be a JSON object".to_owned(),
        )
    } else {
        (ProblemCode::MalformedRequest, text)
    };
    BodyError {
        code,
        field: here,
        message,
    }
}

/// Whether `s` is a price as the document's pattern says: 1 to 12 digits, then optionally a
/// point and 1 or 2 digits (`"99.99"`, `"5"`, `"0.5"`).
pub fn is_price(s: &str) -> bool {
    let (whole, cents) = s.split_once('.').unwrap_or((s, "1"));
    let digits =
        |p: &str, max: usize| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole, 12) && digits(cents, 2)
}

/// The document's pattern for [`is_price`].
pub const PRICE_PATTERN: &str = r"^[0-9]{1,12}(\.[0-9]{1,2})?$";

/// Asks for `ApiError::validation` when a field is out of its documented range.
pub fn within(field: &str, value: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        id: i64,
        qty: i32,
        kind: Option<Kind>,
        name: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Success,
    }

    fn refused(raw: &str) -> (ProblemCode, Option<String>, String) {
        let e = parse_body::<Body>(raw.as_bytes()).expect_err(raw);
        (e.code, e.field, e.message)
    }

    #[test]
    fn refusals_name_their_field_and_sort_400_from_422() {
        use ProblemCode::*;
        let r = refused(r#"{"id":1}"#);
        assert_eq!(
            (r.0, r.1.as_deref(), r.2.as_str()),
            (MalformedRequest, Some("qty"), "missing field")
        );
        let r = refused(r#"{"id":1,"qty":null}"#);
        assert_eq!(
            (r.0, r.1.as_deref(), r.2.as_str()),
            (MalformedRequest, Some("qty"), "must not be null")
        );
        let r = refused(r#"{"id":1,"qty":"abc"}"#);
        assert_eq!((r.0, r.1.as_deref()), (MalformedRequest, Some("qty")));
        let r = refused(r#"{"id":1,"qty":1.5}"#);
        assert_eq!((r.0, r.1.as_deref()), (MalformedRequest, Some("qty")));
        let r = refused(r#"{"id":1,"qty":9999999999}"#);
        assert_eq!((r.0, r.1.as_deref()), (ValidationError, Some("qty")));
        let r = refused(r#"{"id":1,"qty":1,"kind":"paid"}"#);
        assert_eq!((r.0, r.1.as_deref()), (ValidationError, Some("kind")));
        let r = refused(r#"{"id":1,"qty":1,"name":5}"#);
        assert_eq!((r.0, r.1.as_deref()), (MalformedRequest, Some("name")));
        assert_eq!(refused("[1,2]").0, MalformedRequest);
        assert_eq!(refused("[1,2]").1, None);
        assert_eq!(refused("[1,2]").2, "the body must be a JSON object");
        assert_eq!(refused("{not json").0, MalformedRequest);
        assert_eq!(refused("").0, MalformedRequest);
        assert_eq!(refused(r#"{"id":1,"qty":1} x"#).0, MalformedRequest);
    }

    #[test]
    fn prices_follow_the_pattern() {
        for ok in ["99.99", "5", "0.5", "123456789012.00"] {
            assert!(is_price(ok), "{ok}");
        }
        for bad in [
            "",
            ".5",
            "5.",
            "1.001",
            "-1",
            "1e3",
            " 1",
            "1234567890123",
            "1.2.3",
            "a",
        ] {
            assert!(!is_price(bad), "{bad}");
        }
    }
}
