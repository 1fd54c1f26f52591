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

    /// RFC 3339 in UTC with milliseconds (`2026-01-02T03:04:05.678Z`): how a timestamp beyond
    /// the admin page's fixed fields is written over HTTP.
    pub fn to_rfc3339_millis(&self) -> String {
        rfc3339_millis(self.0)
    }
}

/// `t` as RFC 3339 in UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_form_always_has_three_digits_and_a_z() {
        let t: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(rfc3339_millis(t), "2026-01-02T03:04:05.000Z");
        let t: DateTime<Utc> = "2026-01-02T03:04:05.678912+02:00".parse().unwrap();
        assert_eq!(Timestamp(t).to_rfc3339_millis(), "2026-01-02T01:04:05.678Z");
    }
}
