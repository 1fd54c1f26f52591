//! `credits.charge` and `credits.refund`, and the balance adjustments of `users.update`.
//!
//! ## How a change stays exactly-once without transactions
//! Every change has a key, and the ledger has a unique index on it.
//! 1. Insert the ledger entry as `pending`, with a short lease. Losing the insert means the key
//!    was seen: an `applied` entry is a replay; a `pending` one is being finished by whoever holds
//!    its lease (wait for it), or was abandoned (take over its expired lease, atomically).
//! 2. Change the balance in one atomic update of the user document that also sets a mark named
//!    after the key (`ledger_marks.<sha256(key)>`), filtered on the mark being absent (and, for a
//!    charge, on `tokens >= amount`). However often this step is retried, the balance moves once.
//! 3. Mark the entry `applied`.
//!
//! A crash between 1 and 2 leaves a pending entry and an untouched balance; between 2 and 3 a
//! pending entry and a mark on the user. Whoever finishes the entry next (a retry with the same
//! key, or the sweeper once the lease has long expired) sees the mark and only does step 3, or
//! sees no mark and does step 2. A charge refused for lack of tokens deletes its pending entry,
//! so nothing is recorded for a change that did not happen and the key may be tried again.
//! Marks are removed by the sweeper well after their entry is applied ([`SETTLE_AFTER`]), when no
//! request can still be between steps 1 and 2 for that key.

use std::time::{Duration, Instant};

use gantry_contracts::auth::{
    CreditChange, CreditResult, Role, UnsettledCharge, UnsettledCharges, UnsettledQuery, MAX_TOKENS,
};
use gantry_runtime::secrets;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;

use crate::app::App;
use crate::domain::{IdempotencyKey, LedgerKey};
use crate::error::{is_duplicate_key, AuthError, AuthResult};
use crate::store::{now_ms, LedgerDoc, LedgerKind, LedgerState, Store};

/// How long the request that wrote a pending entry has to finish it alone.
const LEASE: Duration = Duration::from_secs(15);
/// How long a request with a repeated key waits for the first one to finish.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(8);
/// How long after its entry is applied a mark is kept on the user.
pub const SETTLE_AFTER: Duration = Duration::from_secs(600);
/// How long past its lease a pending entry must be before the sweeper finishes it.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// What became of a change.
#[derive(Debug)]
enum Outcome {
    /// Applied now; the balance afterwards.
    Applied { balance: i64 },
    /// The key had been applied before; the entry and the current balance.
    Replayed { entry: LedgerDoc, balance: i64 },
    /// Not enough tokens; the current balance. Nothing recorded.
    Refused { balance: i64 },
}

/// The user field that marks `key` as applied to the balance.
fn mark_field(key: &str) -> String {
    format!("ledger_marks.{}", secrets::digest(key))
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn validate_reason(reason: &str, default: &str) -> AuthResult<String> {
    let reason = reason.trim();
    if reason.len() > 500 {
        return Err(AuthError::BadRequest(
            "reason must be at most 500 bytes".into(),
        ));
    }
    Ok(if reason.is_empty() {
        default.to_owned()
    } else {
        reason.to_owned()
    })
}

/// A new pending entry.
fn entry(
    key: &LedgerKey,
    user_id: i64,
    kind: LedgerKind,
    amount: i64,
    delta: i64,
    reason: String,
    actor_id: Option<i64>,
) -> LedgerDoc {
    LedgerDoc {
        key: key.as_ref().to_owned(),
        user_id,
        kind,
        amount,
        delta,
        reason,
        actor_id,
        state: LedgerState::Pending,
        lease_until_ms: 0,
        created_at_ms: 0,
        applied_at_ms: 0,
        settled_at_ms: 0,
        balance_after: None,
    }
}

async fn balance_of(store: &Store, user_id: i64) -> AuthResult<i64> {
    Ok(store
        .user(user_id)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no user with id {user_id}")))?
        .tokens)
}

/// Record `new` exactly once (steps 1 to 3 of the module's protocol).
async fn apply(store: &Store, new: LedgerDoc) -> AuthResult<Outcome> {
    let deadline = Instant::now() + WAIT_FOR_OTHER;
    loop {
        if Instant::now() > deadline {
            return Err(AuthError::Unavailable(format!(
                "another request with key '{}' is still in progress; retry with the same key",
                new.key
            )));
        }
        let now = now_ms();
        let mut mine = new.clone();
        mine.created_at_ms = now;
        mine.lease_until_ms = now + ms(LEASE);
        match store.ledger.insert_one(&mine).await {
            Ok(_) => return finish(store, mine).await,
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("writing a ledger entry")
                    .into())
            }
        }

        let Some(mut existing) = store.find_entry(&new.key).await? else {
            continue; // refused and removed meanwhile: try again as the first
        };
        if existing.user_id != new.user_id
            || existing.kind != new.kind
            || existing.amount != new.amount
        {
            return Err(AuthError::Conflict(format!(
                "key '{}' was already used for a different change",
                new.key
            )));
        }
        match existing.state {
            LedgerState::Applied => {
                let balance = balance_of(store, existing.user_id).await?;
                return Ok(Outcome::Replayed {
                    entry: existing,
                    balance,
                });
            }
            LedgerState::Pending if existing.lease_until_ms > now => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            LedgerState::Pending => {
                if let Some(lease) = store.take_over(&existing, now + ms(LEASE)).await? {
                    existing.lease_until_ms = lease;
                    return finish(store, existing).await;
                }
            }
        }
    }
}

/// Steps 2 and 3 for an entry whose lease we hold.
async fn finish(store: &Store, entry: LedgerDoc) -> AuthResult<Outcome> {
    if now_ms() >= entry.lease_until_ms {
        return Err(AuthError::Unavailable(format!(
            "the change with key '{}' took too long; retry with the same key",
            entry.key
        )));
    }
    let mark = mark_field(&entry.key);
    // The balance afterwards, and whether it is exactly the one this change left (not so when
    // an earlier attempt had already changed it and others may have followed).
    let (balance, exact) = if entry.delta == 0 {
        match store.user(entry.user_id).await? {
            Some(u) => (u.tokens, true),
            None => {
                store.drop_pending(&entry).await?;
                return Err(AuthError::NotFound(format!(
                    "no user with id {}",
                    entry.user_id
                )));
            }
        }
    } else {
        let mut filter = doc! { "_id": entry.user_id, mark.clone(): { "$exists": false } };
        // Never below 0, never above MAX_TOKENS (deltas are bounded, so neither side wraps).
        if entry.delta < 0 {
            filter.insert("tokens", doc! { "$gte": -entry.delta });
        } else {
            filter.insert("tokens", doc! { "$lte": MAX_TOKENS - entry.delta });
        }
        let update = doc! { "$inc": { "tokens": entry.delta }, "$set": { mark.clone(): now_ms() } };
        let after = store
            .users
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| anyhow::Error::new(e).context("changing a balance"))?;
        match after {
            Some(u) => (u.tokens, true),
            None => match store.user(entry.user_id).await? {
                None => {
                    store.drop_pending(&entry).await?;
                    return Err(AuthError::NotFound(format!(
                        "no user with id {}",
                        entry.user_id
                    )));
                }
                Some(u) if store.has_mark(u.id, &mark).await? => (u.tokens, false),
                Some(u) => {
                    store.drop_pending(&entry).await?;
                    return Ok(Outcome::Refused { balance: u.tokens });
                }
            },
        }
    };
    store
        .mark_applied(&entry.key, exact.then_some(balance))
        .await?;
    Ok(Outcome::Applied { balance })
}

impl Store {
    async fn find_entry(&self, key: &str) -> anyhow::Result<Option<LedgerDoc>> {
        use anyhow::Context as _;
        self.ledger
            .find_one(doc! { "key": key })
            .await
            .context("reading a ledger entry")
    }

    /// Take over an abandoned pending entry: succeeds for one caller only.
    async fn take_over(
        &self,
        entry: &LedgerDoc,
        lease_until_ms: i64,
    ) -> anyhow::Result<Option<i64>> {
        use anyhow::Context as _;
        let r = self
            .ledger
            .update_one(
                doc! { "key": &entry.key, "state": "pending", "lease_until_ms": entry.lease_until_ms },
                doc! { "$set": { "lease_until_ms": lease_until_ms } },
            )
            .await
            .context("taking over a pending ledger entry")?;
        Ok((r.matched_count == 1).then_some(lease_until_ms))
    }

    /// Remove a pending entry whose change did not happen (only while we hold its lease).
    async fn drop_pending(&self, entry: &LedgerDoc) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.ledger
            .delete_one(doc! { "key": &entry.key, "state": "pending", "lease_until_ms": entry.lease_until_ms })
            .await
            .context("removing a refused ledger entry")?;
        Ok(())
    }

    async fn has_mark(&self, user_id: i64, mark: &str) -> anyhow::Result<bool> {
        use anyhow::Context as _;
        Ok(self
            .users
            .find_one(doc! { "_id": user_id, mark: { "$exists": true } })
            .await
            .context("checking a ledger mark")?
            .is_some())
    }

    async fn mark_applied(&self, key: &str, balance_after: Option<i64>) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut set = doc! { "state": "applied", "applied_at_ms": now_ms() };
        if let Some(b) = balance_after {
            set.insert("balance_after", b);
        }
        self.ledger
            .update_one(
                doc! { "key": key, "state": "pending" },
                doc! { "$set": set },
            )
            .await
            .context("marking a ledger entry applied")?;
        Ok(())
    }
}

/// A charge or refund moves 1 to [`MAX_TOKENS`] tokens.
fn check_amount(amount: i64) -> AuthResult<()> {
    if !(1..=MAX_TOKENS).contains(&amount) {
        return Err(AuthError::BadRequest(format!(
            "amount must be between 1 and {MAX_TOKENS} tokens"
        )));
    }
    Ok(())
}

/// `credits.charge`: take `amount` tokens once per key; admins pay nothing (the key is still
/// recorded, so a repeat is a replay).
pub async fn charge(app: App, req: CreditChange) -> AuthResult<CreditResult> {
    charge_in(app.store(), req).await
}

/// [`charge`] against a store.
pub async fn charge_in(store: &Store, req: CreditChange) -> AuthResult<CreditResult> {
    let key = IdempotencyKey::parse(&req.key)?;
    check_amount(req.amount)?;
    let reason = validate_reason(&req.reason, "charge")?;
    // A key is charged once and refunded at most once: charging it again after its refund
    // would replay the old charge without taking anything, for work that is then done free.
    // Two independent reads, asked together.
    let refund_key = key.refund();
    let (refunded, user) = tokio::join!(
        store.find_entry(refund_key.as_ref()),
        store.user(req.user_id)
    );
    if refunded?.is_some() {
        return Err(AuthError::Conflict(format!(
            "the charge with key '{}' was refunded; submit again with a new key",
            req.key
        )));
    }
    let user =
        user?.ok_or_else(|| AuthError::NotFound(format!("no user with id {}", req.user_id)))?;
    let delta = if user.role == Role::Admin {
        0
    } else {
        -req.amount
    };
    let new = entry(
        &key.ledger(),
        user.id,
        LedgerKind::Charge,
        req.amount,
        delta,
        reason,
        None,
    );
    match apply(store, new).await? {
        Outcome::Applied { balance } => {
            tracing::info!(user_id = user.id, tokens = -delta, "charged");
            Ok(CreditResult {
                tokens_used: -delta,
                remaining_tokens: balance,
                replayed: false,
            })
        }
        Outcome::Replayed { entry, balance } => Ok(CreditResult {
            tokens_used: -entry.delta,
            remaining_tokens: balance,
            replayed: true,
        }),
        Outcome::Refused { balance } => Err(AuthError::InsufficientTokens(format!(
            "balance is {balance} tokens; this costs {}",
            req.amount
        ))),
    }
}

/// `credits.refund`: give back what the applied charge with the same key took (at most
/// `amount`), once.
pub async fn refund(app: App, req: CreditChange) -> AuthResult<CreditResult> {
    refund_in(app.store(), req).await
}

/// Most charges one `credits.unsettled` answers.
const MAX_UNSETTLED: u32 = 1000;
/// Widest window of one `credits.unsettled`, milliseconds (7 days).
const MAX_UNSETTLED_WINDOW_MS: i64 = 7 * 86_400_000;

/// `credits.unsettled`: charges applied in the window that took tokens and were not refunded.
pub async fn unsettled(app: App, q: UnsettledQuery) -> AuthResult<UnsettledCharges> {
    use futures::TryStreamExt;
    if q.until_ms <= q.since_ms || q.until_ms - q.since_ms > MAX_UNSETTLED_WINDOW_MS {
        return Err(AuthError::BadRequest(
            "the window must be non-empty and at most 7 days".into(),
        ));
    }
    if !(1..=MAX_UNSETTLED).contains(&q.limit) {
        return Err(AuthError::BadRequest(format!(
            "limit must be 1 to {MAX_UNSETTLED}"
        )));
    }
    let store = app.store();
    let ctx = |what: &'static str| move |e| anyhow::Error::new(e).context(what);
    let charges: Vec<LedgerDoc> = store
        .ledger
        .find(doc! {
            "kind": "charge",
            "state": "applied",
            "delta": { "$lt": 0_i64 },
            "created_at_ms": { "$gte": q.since_ms, "$lt": q.until_ms },
        })
        .sort(doc! { "created_at_ms": 1 })
        .limit(i64::from(q.limit))
        .await
        .map_err(ctx("listing charges"))?
        .try_collect()
        .await
        .map_err(ctx("listing charges"))?;
    let refund_keys: Vec<String> = charges
        .iter()
        .map(|c| format!("refund:{}", c.key))
        .collect();
    let refunded: std::collections::HashSet<String> = store
        .ledger
        .find(doc! { "key": { "$in": &refund_keys } })
        .await
        .map_err(ctx("listing refunds"))?
        .try_collect::<Vec<LedgerDoc>>()
        .await
        .map_err(ctx("listing refunds"))?
        .into_iter()
        .filter_map(|r| r.key.strip_prefix("refund:").map(str::to_owned))
        .collect();
    Ok(UnsettledCharges {
        charges: charges
            .into_iter()
            .filter(|c| !refunded.contains(&c.key))
            .map(|c| UnsettledCharge {
                key: c.key,
                user_id: c.user_id,
                amount: c.amount,
            })
            .collect(),
    })
}

/// [`refund`] against a store.
pub async fn refund_in(store: &Store, req: CreditChange) -> AuthResult<CreditResult> {
    let key = IdempotencyKey::parse(&req.key)?;
    check_amount(req.amount)?;
    let reason = validate_reason(&req.reason, "refund")?;
    let not_found = || {
        AuthError::NotFound(format!(
            "no charge with key '{}' for user {}",
            req.key, req.user_id
        ))
    };
    let charge = store
        .find_entry(key.ledger().as_ref())
        .await?
        .ok_or_else(not_found)?;
    if charge.kind != LedgerKind::Charge || charge.user_id != req.user_id {
        return Err(not_found());
    }
    if charge.state != LedgerState::Applied {
        return Err(AuthError::Conflict(format!(
            "the charge with key '{}' is still being applied; retry shortly",
            req.key
        )));
    }
    if store.user(req.user_id).await?.is_none() {
        // The user was deleted: there is no balance to give back to. Record the refund as done
        // (changing nothing), so whoever owes it stops asking.
        return refund_deleted(store, &key, req.user_id, req.amount).await;
    }
    let back = (-charge.delta).min(req.amount).max(0);
    let new = entry(
        &key.refund(),
        req.user_id,
        LedgerKind::Refund,
        req.amount,
        back,
        reason,
        None,
    );
    match apply(store, new).await? {
        Outcome::Applied { balance } => {
            tracing::info!(user_id = req.user_id, tokens = back, "refunded");
            Ok(CreditResult {
                tokens_used: back,
                remaining_tokens: balance,
                replayed: false,
            })
        }
        Outcome::Replayed { entry, balance } => Ok(CreditResult {
            tokens_used: entry.delta,
            remaining_tokens: balance,
            replayed: true,
        }),
        Outcome::Refused { .. } => {
            Err(anyhow::anyhow!("a refund was refused for lack of tokens").into())
        }
    }
}

/// The refund of a deleted user's charge: recorded once, applied at once, moving nothing.
async fn refund_deleted(
    store: &Store,
    key: &IdempotencyKey,
    user_id: i64,
    amount: i64,
) -> AuthResult<CreditResult> {
    let now = now_ms();
    let mut e = entry(
        &key.refund(),
        user_id,
        LedgerKind::Refund,
        amount,
        0,
        "the user was deleted: nothing to give back".into(),
        None,
    );
    e.state = LedgerState::Applied;
    e.created_at_ms = now;
    e.applied_at_ms = now;
    e.settled_at_ms = now;
    let replayed = match store.ledger.insert_one(&e).await {
        Ok(_) => false,
        Err(err) if is_duplicate_key(&err) => true,
        Err(err) => {
            return Err(anyhow::Error::new(err)
                .context("recording the refund of a deleted user's charge")
                .into())
        }
    };
    if !replayed {
        tracing::info!(
            user_id,
            "a deleted user's charge was settled without a refund"
        );
    }
    Ok(CreditResult {
        tokens_used: 0,
        remaining_tokens: 0,
        replayed,
    })
}

/// An admin's balance adjustment (`users.update` with `tokens_delta`), under a fresh key.
pub async fn adjust(
    store: &Store,
    user_id: i64,
    delta: i64,
    reason: &str,
    actor_id: Option<i64>,
) -> AuthResult<i64> {
    let reason = validate_reason(reason, "adjusted by an admin")?;
    if !(-MAX_TOKENS..=MAX_TOKENS).contains(&delta) {
        return Err(AuthError::BadRequest(format!(
            "tokens_delta must be between -{MAX_TOKENS} and {MAX_TOKENS}"
        )));
    }
    let new = entry(
        &LedgerKey::adjustment(),
        user_id,
        LedgerKind::Adjust,
        delta.abs(),
        delta,
        reason,
        actor_id,
    );
    match apply(store, new).await? {
        Outcome::Applied { balance } | Outcome::Replayed { balance, .. } => Ok(balance),
        Outcome::Refused { balance } if delta < 0 => Err(AuthError::Conflict(format!(
            "balance is {balance} tokens; cannot remove {}",
            delta.abs()
        ))),
        Outcome::Refused { balance } => Err(AuthError::Conflict(format!(
            "balance is {balance} tokens; adding {delta} would pass the limit of {MAX_TOKENS}"
        ))),
    }
}

/// The ledger entry of a new user's starting balance (the balance itself is written with the
/// user, so there is nothing to apply).
pub async fn record_opening_balance(store: &Store, user_id: i64, tokens: i64) -> AuthResult<()> {
    let now = now_ms();
    let mut e = entry(
        &LedgerKey::adjustment(),
        user_id,
        LedgerKind::Adjust,
        tokens,
        tokens,
        "opening balance".into(),
        None,
    );
    e.state = LedgerState::Applied;
    e.created_at_ms = now;
    e.applied_at_ms = now;
    e.settled_at_ms = now;
    e.balance_after = Some(tokens);
    store
        .ledger
        .insert_one(&e)
        .await
        .map_err(|e| anyhow::Error::new(e).context("recording an opening balance"))?;
    Ok(())
}

/// Background upkeep as of `now` (ms; tests pass a later time to skip ahead): finish entries
/// abandoned by a crashed request, and remove marks of entries applied long ago.
pub async fn settle(store: &Store, now: i64) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use futures::TryStreamExt;

    let abandoned: Vec<LedgerDoc> = store
        .ledger
        .find(doc! { "state": "pending", "lease_until_ms": { "$lt": now - ms(ABANDONED_AFTER) } })
        .limit(200)
        .await
        .context("listing abandoned ledger entries")?
        .try_collect()
        .await
        .context("reading abandoned ledger entries")?;
    for e in abandoned {
        if let Some(lease) = store.take_over(&e, now.max(now_ms()) + ms(LEASE)).await? {
            let key = e.key.clone();
            let outcome = finish(
                store,
                LedgerDoc {
                    lease_until_ms: lease,
                    ..e
                },
            )
            .await;
            tracing::info!(key_digest = %secrets::digest(&key), outcome = ?outcome.map(|_| ()), "finished an abandoned ledger entry");
        }
    }

    let applied: Vec<LedgerDoc> = store
        .ledger
        .find(doc! { "state": "applied", "settled_at_ms": 0, "applied_at_ms": { "$lt": now - ms(SETTLE_AFTER) } })
        .limit(500)
        .await
        .context("listing ledger entries to settle")?
        .try_collect()
        .await
        .context("reading ledger entries to settle")?;
    for e in applied {
        let mut unset = Document::new();
        unset.insert(mark_field(&e.key), "");
        store
            .users
            .update_one(doc! { "_id": e.user_id }, doc! { "$unset": unset })
            .await
            .context("removing a ledger mark")?;
        store
            .ledger
            .update_one(
                doc! { "key": &e.key },
                doc! { "$set": { "settled_at_ms": now_ms() } },
            )
            .await
            .context("settling a ledger entry")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_field_names_safe_for_any_key() {
        let m = mark_field("job.with.dots$and$dollars");
        assert!(m.starts_with("ledger_marks."));
        let name = m.trim_start_matches("ledger_marks.");
        assert_eq!(name.len(), 64);
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
