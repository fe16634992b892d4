//! API errors, rendered as Kubernetes `Status` objects.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use sheaf_store::StoreError;
use sheaf_types::meta::{StatusCause, StatusDetails};
use sheaf_types::{FieldError, Status};

/// An error answered to a client. Every variant maps to a 4xx or 5xx with a
/// `Status` body whose message says what was wrong and what to do.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    /// Kubernetes `StatusReason`, e.g. `NotFound`, `Invalid`, `Conflict`.
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<StatusDetails>>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Names the object an error is about, for `Status.details`.
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    pub group: &'a str,
    /// Plural resource name, as Kubernetes puts in `details.kind`.
    pub resource: &'a str,
    pub name: &'a str,
}

impl<'a> Target<'a> {
    fn details(&self) -> StatusDetails {
        StatusDetails {
            name: Some(self.name.to_string()).filter(|s| !s.is_empty()),
            group: Some(self.group.to_string()).filter(|s| !s.is_empty()),
            kind: Some(self.resource.to_string()).filter(|s| !s.is_empty()),
            ..Default::default()
        }
    }
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(t: &Target<'_>) -> Self {
        ApiError {
            details: Some(Box::new(t.details())),
            ..Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{} {:?} not found", t.qualified(), t.name))
        }
    }
    pub fn not_found_msg(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn already_exists(t: &Target<'_>) -> Self {
        ApiError {
            details: Some(Box::new(t.details())),
            ..Self::new(StatusCode::CONFLICT, "AlreadyExists", format!("{} {:?} already exists", t.qualified(), t.name))
        }
    }
    pub fn conflict(t: &Target<'_>) -> Self {
        ApiError {
            details: Some(Box::new(t.details())),
            ..Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; \
                     please apply your changes to the latest version and try again",
                    t.qualified(),
                    t.name
                ),
            )
        }
    }
    pub fn invalid(t: &Target<'_>, kind: &str, errors: &[FieldError]) -> Self {
        let list = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let message = format!("{} {:?} is invalid: {}", kind, t.name, join_errors(&list));
        let mut details = t.details();
        details.kind = Some(kind.to_string());
        details.causes = errors
            .iter()
            .map(|e| StatusCause {
                reason: Some(e.reason.as_cause().to_string()),
                message: Some(e.message.clone()),
                field: Some(e.field.clone()),
            })
            .collect();
        ApiError { details: Some(Box::new(details)), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message) }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized: send a valid bearer token (see `sheaf kubeconfig`)",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("request body too large: the limit is {limit} bytes"),
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }

    /// Maps a store error for the object `t`.
    pub fn from_store(e: StoreError, t: &Target<'_>) -> Self {
        match e {
            StoreError::AlreadyExists { .. } => Self::already_exists(t),
            StoreError::NotFound { .. } => Self::not_found(t),
            StoreError::Conflict { .. } => Self::conflict(t),
            StoreError::Compacted { requested, compacted } => Self::gone(format!(
                "too old resource version: {requested} ({compacted}); list again to get a current resourceVersion"
            )),
            StoreError::FutureRevision { requested, current } => {
                let mut err = Self::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Timeout",
                    format!("Too large resource version: {requested}, current resource version: {current}"),
                );
                err.details = Some(Box::new(StatusDetails { retry_after_seconds: Some(1), ..Default::default() }));
                err
            }
            StoreError::Unavailable { message } => Self::unavailable(format!("storage unavailable: {message}")),
            StoreError::Backend { message } => Self::internal(format!("storage error: {message}")),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: Default::default(),
            status: "Failure".into(),
            message: self.message.clone(),
            reason: self.reason.into(),
            details: self.details.as_deref().cloned(),
            code: self.code.as_u16(),
        }
    }
}

fn join_errors(list: &[String]) -> String {
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code.as_u16(), self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut resp = (self.code, body).into_response();
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        resp
    }
}
