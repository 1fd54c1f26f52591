//! `users.ledger`: one user's credit ledger as admins read it, newest first. Only entries that
//! changed the balance (applied) are shown; a change still in flight appears once it is done.

use futures::TryStreamExt;
use gantry_contracts::auth::{LedgerEntry, LedgerEntryKind, LedgerPage, LedgerQuery};
use gantry_contracts::paging::MAX_LEDGER_LIMIT;
use gantry_runtime::mongo;
use mongodb::bson::doc;

use crate::app::App;
use crate::error::{AuthError, AuthResult};
use crate::store::{to_time, LedgerDoc, LedgerKind};

/// The entry as listed. A charge's key is its job's id, a refund's `refund:<job id>`.
fn listed(e: LedgerDoc) -> LedgerEntry {
    let (kind, job_id) = match e.kind {
        LedgerKind::Charge => (LedgerEntryKind::Charge, Some(e.key.clone())),
        LedgerKind::Refund => (
            LedgerEntryKind::Refund,
            e.key.strip_prefix("refund:").map(str::to_owned),
        ),
        LedgerKind::Adjust => (LedgerEntryKind::Adjustment, None),
    };
    let at = if e.applied_at_ms > 0 {
        e.applied_at_ms
    } else {
        e.created_at_ms
    };
    LedgerEntry {
        id: e.key,
        kind,
        delta: e.delta,
        balance_after: e.balance_after,
        job_id,
        reason: e.reason,
        actor_id: e.actor_id,
        at: to_time(at).into(),
    }
}

/// `users.ledger`.
pub async fn ledger(app: App, q: LedgerQuery) -> AuthResult<LedgerPage> {
    let page = q
        .page()
        .check(MAX_LEDGER_LIMIT)
        .map_err(AuthError::BadRequest)?;
    let store = app.store();
    if store.user(q.user_id).await?.is_none() {
        return Err(AuthError::NotFound(format!(
            "no user with id {}",
            q.user_id
        )));
    }
    let ctx = |what: &'static str| move |e| anyhow::Error::new(e).context(what);
    let filter = doc! { "user_id": q.user_id, "state": "applied" };
    let total = mongo::count(&store.ledger, filter.clone())
        .await
        .map_err(ctx("counting ledger entries"))?;
    let entries: Vec<LedgerDoc> = store
        .ledger
        .find(filter)
        // Newest first; the key orders entries applied in the same millisecond, so pages never
        // overlap or skip one.
        .sort(doc! { "applied_at_ms": -1, "key": -1 })
        .skip(page.offset)
        .limit(i64::from(page.limit))
        .await
        .map_err(ctx("listing ledger entries"))?
        .try_collect()
        .await
        .map_err(ctx("reading ledger entries"))?;
    Ok(LedgerPage {
        entries: entries.into_iter().map(listed).collect(),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LedgerState;

    fn doc_of(kind: LedgerKind, key: &str) -> LedgerDoc {
        LedgerDoc {
            key: key.into(),
            user_id: 2,
            kind,
            amount: 100,
            delta: -100,
            reason: "r".into(),
            actor_id: None,
            state: LedgerState::Applied,
            lease_until_ms: 0,
            created_at_ms: 1_000,
            applied_at_ms: 1_767_323_045_678,
            settled_at_ms: 0,
            balance_after: Some(900),
        }
    }

    #[test]
    fn charges_and_refunds_name_their_job_and_adjustments_none() {
        let c = listed(doc_of(LedgerKind::Charge, "job-1"));
        assert_eq!(
            (c.kind, c.job_id.as_deref()),
            (LedgerEntryKind::Charge, Some("job-1"))
        );
        let r = listed(doc_of(LedgerKind::Refund, "refund:job-1"));
        assert_eq!(
            (r.kind, r.job_id.as_deref()),
            (LedgerEntryKind::Refund, Some("job-1"))
        );
        let a = listed(doc_of(LedgerKind::Adjust, "adjust:abc"));
        assert_eq!((a.kind, a.job_id), (LedgerEntryKind::Adjustment, None));
        assert_eq!(a.id, "adjust:abc");
        assert_eq!(a.balance_after, Some(900));
        assert_eq!(a.at.to_rfc3339_millis(), "2026-01-02T03:04:05.678Z");
    }
}
