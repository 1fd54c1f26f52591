//! The ledger's background upkeep against the real store, with time skipped ahead instead of
//! waited for: marks are removed long after their charge (and a repeat is still a replay), and
//! entries abandoned by a crashed request are finished or dropped.

use gantry_auth::credits::{self, SETTLE_AFTER};
use gantry_auth::store::{now_ms, LedgerDoc, LedgerKind, LedgerState, Store, UserDoc};
use gantry_contracts::auth::{CreditChange, Role};
use gantry_testing::unique_prefix;
use mongodb::bson::{doc, Document};

async fn store() -> (gantry_testing::Store, Store) {
    let server = gantry_testing::Store::start().await;
    let client = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
    let store = Store::new(client.database(&format!("{}auth", unique_prefix())));
    store.create_indexes().await.unwrap();
    (server, store)
}

async fn user(store: &Store, id: i64, tokens: i64) {
    let u = UserDoc {
        id,
        username: format!("user{id}"),
        email: format!("user{id}@example.com"),
        password_hash: "x".into(),
        role: Role::User,
        tokens,
        active: true,
        created_at_ms: now_ms(),
    };
    assert!(store.insert_user(&u).await.unwrap());
}

async fn raw_user(store: &Store, id: i64) -> Document {
    store
        .db
        .collection::<Document>("users")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap()
}

fn marks(d: &Document) -> usize {
    d.get_document("ledger_marks").map(|m| m.len()).unwrap_or(0)
}

fn charge(user_id: i64, amount: i64, key: &str) -> CreditChange {
    CreditChange {
        user_id,
        amount,
        key: key.into(),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn marks_are_removed_long_after_the_charge_and_a_repeat_stays_a_replay() {
    let (_server, store) = store().await;
    user(&store, 1, 1000).await;
    let r = credits::charge_in(&store, charge(1, 100, "job-1"))
        .await
        .unwrap();
    assert_eq!(r.remaining_tokens, 900);
    assert_eq!(marks(&raw_user(&store, 1).await), 1);

    // Not yet: the mark must outlive any request that could still be finishing the entry.
    credits::settle(&store, now_ms()).await.unwrap();
    assert_eq!(marks(&raw_user(&store, 1).await), 1);

    let later = now_ms() + SETTLE_AFTER.as_millis() as i64 + 1000;
    credits::settle(&store, later).await.unwrap();
    assert_eq!(marks(&raw_user(&store, 1).await), 0);
    let entry = store
        .ledger
        .find_one(doc! { "key": "job-1" })
        .await
        .unwrap()
        .unwrap();
    assert!(entry.settled_at_ms > 0);

    let again = credits::charge_in(&store, charge(1, 100, "job-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.remaining_tokens, 900);
}

#[tokio::test]
async fn entries_abandoned_mid_change_are_finished_or_dropped_by_the_upkeep() {
    let (_server, store) = store().await;
    user(&store, 1, 150).await;
    let now = now_ms();
    let pending = |key: &str, amount: i64| LedgerDoc {
        key: key.into(),
        user_id: 1,
        kind: LedgerKind::Charge,
        amount,
        delta: -amount,
        reason: "test".into(),
        actor_id: None,
        state: LedgerState::Pending,
        lease_until_ms: now - 1000,
        created_at_ms: now - 20_000,
        applied_at_ms: 0,
        settled_at_ms: 0,
        balance_after: None,
    };
    store
        .ledger
        .insert_one(pending("affordable", 100))
        .await
        .unwrap();
    store
        .ledger
        .insert_one(pending("too-dear", 500))
        .await
        .unwrap();

    // Lease just expired: a retry could still come, so the upkeep leaves them.
    credits::settle(&store, now).await.unwrap();
    assert_eq!(
        store
            .ledger
            .count_documents(doc! { "state": "pending" })
            .await
            .unwrap(),
        2
    );

    credits::settle(&store, now + 120_000).await.unwrap();
    let affordable = store
        .ledger
        .find_one(doc! { "key": "affordable" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(affordable.state, LedgerState::Applied);
    assert!(
        store
            .ledger
            .find_one(doc! { "key": "too-dear" })
            .await
            .unwrap()
            .is_none(),
        "a change that cannot happen is dropped"
    );
    assert_eq!(store.user(1).await.unwrap().unwrap().tokens, 50);

    // A late retry of the finished one is a replay.
    let r = credits::charge_in(&store, charge(1, 100, "affordable"))
        .await
        .unwrap();
    assert!(r.replayed);
    assert_eq!(r.remaining_tokens, 50);
}

#[tokio::test]
async fn a_refund_owed_to_a_deleted_user_is_recorded_once_and_moves_nothing() {
    let (_server, store) = store().await;
    user(&store, 1, 500).await;
    let r = credits::charge_in(&store, charge(1, 100, "job-9"))
        .await
        .unwrap();
    assert_eq!(r.remaining_tokens, 400);
    let charged = store
        .ledger
        .find_one(doc! { "key": "job-9" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(charged.balance_after, Some(400), "the balance right after");
    store.users.delete_one(doc! { "_id": 1 }).await.unwrap();

    for replay in [false, true] {
        let r = credits::refund_in(&store, charge(1, 100, "job-9"))
            .await
            .unwrap();
        assert_eq!((r.tokens_used, r.replayed), (0, replay));
    }
    let refund = store
        .ledger
        .find_one(doc! { "key": "refund:job-9" })
        .await
        .unwrap()
        .expect("the refund is recorded");
    assert_eq!((refund.delta, refund.state), (0, LedgerState::Applied));
    assert!(store.user(1).await.unwrap().is_none(), "nobody came back");
}
