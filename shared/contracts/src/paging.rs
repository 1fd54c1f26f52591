//! Paging of the lists the api serves with `limit`, `offset` and `total`: the one set of bounds
//! the api documents and every service checks again on the bus, so that no request can ask a
//! service for an unbounded reply.

use serde::{Deserialize, Serialize};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page of users, API tokens and cluster tokens.
pub const MAX_LIMIT: u32 = 1000;
/// Largest page of ledger entries: an entry carries a reason of up to 500 bytes, so a page stays
/// well inside one bus message.
pub const MAX_LEDGER_LIMIT: u32 = 200;
/// Largest offset (what a store can skip, and far beyond any list Gantry keeps).
pub const MAX_OFFSET: u64 = 1_000_000_000_000_000;

/// `limit` and `offset` of one page, as a request carries them (both optional on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageQuery {
    /// Most entries (default [`DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Entries to skip.
    #[serde(default)]
    pub offset: u64,
}

/// A page request within its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Most entries, 1 to the list's maximum.
    pub limit: u32,
    /// Entries skipped, at most [`MAX_OFFSET`].
    pub offset: u64,
}

impl PageQuery {
    /// Check against a list's largest page `max`; the error names the parameter and its range.
    pub fn check(self, max: u32) -> Result<Page, String> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT.min(max));
        if !(1..=max).contains(&limit) {
            return Err(format!("limit must be between 1 and {max}"));
        }
        if self.offset > MAX_OFFSET {
            return Err(format!("offset must be between 0 and {MAX_OFFSET}"));
        }
        Ok(Page {
            limit,
            offset: self.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_query_asks_for_the_first_page_of_the_default_size() {
        assert_eq!(
            PageQuery::default().check(MAX_LIMIT),
            Ok(Page {
                limit: DEFAULT_LIMIT,
                offset: 0
            })
        );
        let q: PageQuery = serde_json::from_str("{}").unwrap();
        assert_eq!(q, PageQuery::default());
    }

    #[test]
    fn a_limit_or_offset_out_of_range_is_refused_naming_it_and_its_range() {
        for limit in [0, MAX_LIMIT + 1] {
            let e = PageQuery {
                limit: Some(limit),
                offset: 0,
            }
            .check(MAX_LIMIT)
            .unwrap_err();
            assert_eq!(e, "limit must be between 1 and 1000");
        }
        let e = PageQuery {
            limit: None,
            offset: MAX_OFFSET + 1,
        }
        .check(MAX_LIMIT)
        .unwrap_err();
        assert!(e.starts_with("offset must be between 0 and "), "{e}");
        assert_eq!(
            PageQuery {
                limit: Some(MAX_LEDGER_LIMIT),
                offset: 5
            }
            .check(MAX_LEDGER_LIMIT),
            Ok(Page {
                limit: MAX_LEDGER_LIMIT,
                offset: 5
            })
        );
    }
}
