//! What the `openapi` feature adds besides the derives: how a few contract types present
//! themselves in the OpenAPI document, and the serializers the derives point at.
//!
//! Some fields hold a closed set of values (a [`crate::registry::Driver`], a
//! [`crate::registry::ProcessStatus`]) or a typed document (the [`crate::models::ModelCard`]) but
//! sit in the admin page's published shapes, where they have always been documented as a plain
//! `string` or a free-form value. [`serde_schema!`] gives such a type exactly that schema, and
//! carries its value through serde, so the JSON on the wire is the one NATS carries.

use serde::Serialize;
use serde_json::Value;

/// Serialize a field the way serde does (timestamps as `2024-01-01T00:00:00.5Z`, not
/// poem-openapi's `+00:00`), for `#[oai(serialize_with = "crate::openapi::via_serde")]`.
pub fn via_serde<T: Serialize>(value: &T) -> Option<Value> {
    serde_json::to_value(value).ok()
}

/// A timestamp as every field beyond the admin page's fixed ones carries it: RFC 3339, UTC,
/// milliseconds (`2024-01-01T00:00:00.000Z`).
pub fn rfc3339_ms(t: &chrono::DateTime<chrono::Utc>) -> Option<Value> {
    Some(Value::String(crate::rfc3339_millis(*t)))
}

/// [`rfc3339_ms`] of an optional timestamp.
pub fn rfc3339_ms_opt(t: &Option<chrono::DateTime<chrono::Utc>>) -> Option<Value> {
    Some(
        t.as_ref()
            .map_or(Value::Null, |t| Value::String(crate::rfc3339_millis(*t))),
    )
}

/// A timestamp as the admin page lists it: RFC 3339, UTC, whole seconds
/// (`2024-01-01T00:00:00Z`).
pub fn rfc3339_secs(t: &crate::Timestamp) -> Option<Value> {
    Some(Value::String(
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    ))
}

/// A timestamp beyond the admin page's fixed fields: RFC 3339, UTC, milliseconds
/// (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339_millis(t: &crate::Timestamp) -> Option<Value> {
    Some(Value::String(t.to_rfc3339_millis()))
}

/// Implement poem-openapi's `Type`, `ToJSON` and `ParseFromJSON` for a serde type, documented
/// inline with the given schema (`string`, or `any` for a free-form value).
macro_rules! serde_schema {
    ($ty:ty, $name:literal, $schema:expr) => {
        $crate::openapi::serde_schema!($ty, $name, $schema, $crate::openapi::via_serde);
    };
    ($ty:ty, $name:literal, $schema:expr, $to_json:path) => {
        impl poem_openapi::types::Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl poem_openapi::types::ToJSON for $ty {
            fn to_json(&self) -> Option<serde_json::Value> {
                $to_json(self)
            }
        }

        impl poem_openapi::types::ParseFromJSON for $ty {
            fn parse_from_json(
                value: Option<serde_json::Value>,
            ) -> poem_openapi::types::ParseResult<Self> {
                serde_json::from_value(value.unwrap_or_default())
                    .map_err(poem_openapi::types::ParseError::custom)
            }
        }
    };
}

/// A closed set documented as a plain `string`.
macro_rules! string_schema {
    ($($ty:ty),* $(,)?) => {
        $($crate::openapi::serde_schema!(
            $ty,
            "string",
            poem_openapi::registry::MetaSchema::new("string")
        );)*
    };
}

pub(crate) use serde_schema;

string_schema!(
    crate::registry::Driver,
    crate::registry::ProcessStatus,
    crate::jobs::WaitingReason
);
serde_schema!(
    crate::Timestamp,
    "string",
    poem_openapi::registry::MetaSchema::new("string"),
    rfc3339_millis
);
serde_schema!(
    crate::models::ModelCard,
    "any",
    poem_openapi::registry::MetaSchema::ANY
);

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use crate::registry::{Driver, ProcessStatus};

    #[test]
    fn closed_sets_travel_as_their_lowercase_names() {
        assert_eq!(Driver::Rocm.to_json(), Some(serde_json::json!("rocm")));
        assert_eq!(
            ProcessStatus::Unavailable.to_json(),
            Some(serde_json::json!("unavailable"))
        );
    }

    #[test]
    fn timestamps_are_served_in_zulu_form_with_milliseconds() {
        let t: crate::Timestamp = serde_json::from_str("\"2024-01-01T00:00:00.250Z\"").unwrap();
        assert_eq!(
            t.to_json(),
            Some(serde_json::json!("2024-01-01T00:00:00.250Z"))
        );
        assert_eq!(
            super::rfc3339_secs(&t),
            Some(serde_json::json!("2024-01-01T00:00:00Z"))
        );
        // Whole seconds and sub-millisecond digits alike: always three digits.
        let t: crate::Timestamp =
            serde_json::from_str("\"2024-01-01T00:00:00.123456789Z\"").unwrap();
        assert_eq!(
            t.to_json(),
            Some(serde_json::json!("2024-01-01T00:00:00.123Z"))
        );
        let t: crate::Timestamp = serde_json::from_str("\"2024-01-01T00:00:00Z\"").unwrap();
        assert_eq!(
            t.to_json(),
            Some(serde_json::json!("2024-01-01T00:00:00.000Z"))
        );
    }
}
