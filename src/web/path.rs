//! Ids from the path, parsed once at the edge: a malformed id is no record (404)
//! and never reaches PostgreSQL (a NUL byte would be an error there, not a miss).

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};

use crate::error::{ApiError, AppError};

/// The ULID in the `{id}` segment of the path (an export run or a privacy request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordId(String);

impl RecordId {
    /// `raw` when it is a ULID.
    pub fn parse(raw: &str) -> Option<Self> {
        ulid::Ulid::from_string(raw).is_ok().then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `{id}` path parameter, whatever else the path holds.
fn id_param(params: &[(String, String)]) -> Option<&str> {
    params.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str())
}

impl<S: Send + Sync> FromRequestParts<S> for RecordId {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(params) =
            Path::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(|_| AppError::NotFound)?;
        id_param(&params).and_then(Self::parse).ok_or(AppError::NotFound)
    }
}

/// [`RecordId`] for the JSON API (a malformed id answers JSON 404).
#[derive(Clone, Debug)]
pub struct ApiRecordId(pub RecordId);

impl<S: Send + Sync> FromRequestParts<S> for ApiRecordId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(RecordId::from_request_parts(parts, state).await?))
    }
}
