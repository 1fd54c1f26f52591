//! Carrying a service's reply into the api's documented type: the field names are the same by
//! contract, so the value goes through JSON once instead of a hand-written copy per type.

use poem_openapi::types::ParseFromJSON;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};

/// Convert `value` into `T` through JSON. A mismatch is a bug between services: 500.
pub fn carry<T: ParseFromJSON>(value: impl Serialize) -> ApiResult<T> {
    let json = serde_json::to_value(value).map_err(ApiError::internal)?;
    T::parse_from_json(Some(json)).map_err(|e| {
        ApiError::internal(format!(
            "a service reply does not match the contract: {}",
            e.into_message()
        ))
    })
}
