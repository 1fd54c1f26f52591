//! [`Timestamp`]: a point in time as the contract carries it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A UTC point in time, RFC 3339 on the wire (`2024-01-01T00:00:00Z`, fractions of a second when
/// there are any); the api serves it with milliseconds (`2024-01-01T00:00:00.000Z`), as every
/// timestamp beyond the admin page's fixed fields. A newtype rather than a bare `DateTime<Utc>`
/// so the OpenAPI document can keep presenting it as a plain `string`, as the admin page always
/// has; read it as a `DateTime<Utc>` through `Deref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(Utc::now())
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t)
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

impl std::ops::Deref for Timestamp {
    type Target = DateTime<Utc>;

    fn deref(&self) -> &DateTime<Utc> {
        &self.0
    }
}

impl PartialEq<DateTime<Utc>> for Timestamp {
    fn eq(&self, other: &DateTime<Utc>) -> bool {
        self.0 == *other
    }
}
