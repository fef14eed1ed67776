//! The one error shape every request gets, and the helpers that read a body and answer.

use super::*;

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message,
            field,
        }
    }

    pub(super) fn invalid(message: String, field: Option<&str>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            message,
            field.map(str::to_owned),
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        match error {
            Error::NotFound(message) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message, None)
            }
            Error::Ambiguous(message) => {
                ApiError::new(StatusCode::CONFLICT, "ambiguous", message, None)
            }
            Error::Invalid { message, field } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", message, field)
            }
            Error::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message, None)
            }
            Error::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message, None)
            }
            Error::Unavailable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                None,
            ),
            Error::Internal(message) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// Axum refuses some requests before a handler runs, in plain text or without a body: a body
/// over [`MAX_BODY`] (413), a query string or path segment that does not decode (400), a method
/// the route does not take (405). Give those the error shape of every other error.
pub(super) async fn error_shape(method: Method, uri: Uri, response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let (code, field) = match status {
        StatusCode::NOT_FOUND => ("not_found", None),
        StatusCode::CONFLICT => ("conflict", None),
        StatusCode::UNAUTHORIZED => ("unauthenticated", None),
        StatusCode::FORBIDDEN => ("forbidden", None),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", None),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid", Some("body".to_owned())),
        status if status.is_server_error() => ("internal", None),
        _ => ("invalid", None),
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body: larger than the limit of {MAX_BODY} bytes")
        }
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {}", uri.path()),
        _ => {
            let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
                .unwrap_or_default();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => status
                    .canonical_reason()
                    .unwrap_or("bad request")
                    .to_lowercase(),
            }
        }
    };
    let mut shaped = ApiError::new(status, code, message, field).into_response();
    if let Some(allow) = allow {
        shaped.headers_mut().insert(header::ALLOW, allow);
    }
    shaped
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::invalid(format!("request body: {error}"), Some("body")))
}

pub(super) fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}
