//! One error type for every handler, mapped to a response in one place: client errors keep their
//! status, stable code and message; internal errors are logged and answered with a generic 500.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use upkeep_protocol::{ErrorResponse, codes};

use crate::blobs::BlobError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<&'static str>,
        hint: Option<String>,
    },
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn client(
        status: StatusCode,
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            field,
            hint: None,
        }
    }

    pub fn bad_request(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, Some(field), message)
    }

    pub fn not_found(code: &'static str, field: Option<&'static str>, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, field, message)
    }

    pub fn conflict(code: &'static str, field: Option<&'static str>, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, field, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, None, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, codes::FORBIDDEN, None, message)
    }

    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let ApiError::Client { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }
}

impl From<upkeep_domain::ValidationError> for ApiError {
    fn from(err: upkeep_domain::ValidationError) -> Self {
        use upkeep_domain::ValidationError as V;
        let (code, field) = match &err {
            V::Version { .. } => (codes::INVALID_VERSION, "version"),
            V::Name { .. } => (codes::INVALID_NAME, "name"),
            V::Platform { .. } => (codes::INVALID_FIELD, "platform"),
            V::Path { .. } => (codes::INVALID_PATH, "path"),
        };
        ApiError::bad_request(code, field, err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::client(rejection.status(), codes::INVALID_JSON, None, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            codes::INVALID_FIELD,
            None,
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.into_parts();
        (status, Json(body)).into_response()
    }
}

impl ApiError {
    /// The status and the body the client is told, whatever shape it is rendered in (JSON for
    /// the API, a page for the console). Logs the error.
    pub fn into_parts(self) -> (StatusCode, ErrorResponse) {
        match self {
            ApiError::Client {
                status,
                code,
                message,
                field,
                hint,
            } => {
                // Refusals are the client's to fix, but an operator asked "why?" needs them too.
                tracing::info!(status = status.as_u16(), code, field, %message, "request refused");
                let body = ErrorResponse {
                    code: code.to_owned(),
                    message,
                    field: field.map(str::to_owned),
                    hint,
                };
                (status, body)
            }
            other => {
                // Details stay in the log; the client learns only that it was not its fault.
                tracing::error!(error = %other, "internal error");
                let body = ErrorResponse {
                    code: codes::INTERNAL.to_owned(),
                    message: "internal server error; the server log has the details".to_owned(),
                    field: None,
                    hint: None,
                };
                (StatusCode::INTERNAL_SERVER_ERROR, body)
            }
        }
    }
}
