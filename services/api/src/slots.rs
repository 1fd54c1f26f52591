//! Per-user bounds on what costs the server before (or without) a charge: datasets being
//! packed, submissions held open, event streams. Each is a counter per user; a request over its
//! bound is refused with 429 at once, and the slot is given back when the guard drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gantry_contracts::error::ErrorCode;

use crate::error::ApiError;

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A dataset being checked and packed for a submission.
    Packing,
    /// A submission held open until its job ends.
    Held,
    /// An open job event stream.
    Stream,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Packing => "datasets being packed",
            Kind::Held => "submissions held open",
            Kind::Stream => "open event streams",
        }
    }
}

/// The counters, shared by every request of this api replica.
#[derive(Clone, Default)]
pub struct UserSlots {
    counts: Arc<Mutex<HashMap<(Kind, i64), u32>>>,
}

/// A taken slot; given back on drop.
pub struct Slot {
    slots: UserSlots,
    key: (Kind, i64),
}

impl UserSlots {
    /// Take a `kind` slot for `user_id`, of which at most `max` may be held at once.
    pub fn take(&self, kind: Kind, user_id: i64, max: u32) -> Result<Slot, ApiError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry((kind, user_id)).or_default();
        if *n >= max {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "you have {max} {} already (the most allowed at once); try again when one ends",
                    kind.what()
                ),
            ));
        }
        *n += 1;
        Ok(Slot {
            slots: self.clone(),
            key: (kind, user_id),
        })
    }

    /// How many `kind` slots `user_id` holds.
    #[cfg(test)]
    fn held(&self, kind: Kind, user_id: i64) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(kind, user_id)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_user_and_kind_and_given_back_on_drop() {
        let slots = UserSlots::default();
        let a = slots.take(Kind::Stream, 1, 2).unwrap();
        let _b = slots.take(Kind::Stream, 1, 2).unwrap();
        let refused = slots.take(Kind::Stream, 1, 2).err().unwrap();
        assert!(matches!(refused, ApiError::TooManyRequests(..)));
        // Another user, another kind: not affected.
        let _c = slots.take(Kind::Stream, 2, 2).unwrap();
        let _d = slots.take(Kind::Held, 1, 2).unwrap();
        drop(a);
        assert_eq!(slots.held(Kind::Stream, 1), 1);
        assert!(slots.take(Kind::Stream, 1, 2).is_ok());
    }
}
