//! The credit ledger through the auth service over NATS: adjustments, charges and refunds once
//! per key, concurrency across two replicas, interrupted charges, and the ledger's rows.

use std::time::Duration;

use gantry_contracts::auth::{CreditResult, Role, UpdateUser, User, UserRef};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_testing::auth::change;
use gantry_testing::{requests_per_replica, TestStack, READY};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_balance_adjustment_goes_through_the_ledger_and_never_below_zero() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("liam", 50).await;
        let up: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    tokens_delta: Some(25),
                    actor_id: Some(1),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(up.tokens, 75);
        let msg = stack
            .auth_fails(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    tokens_delta: Some(-100),
                    role: Some(Role::Admin),
                    ..Default::default()
                },
                ErrorCode::Conflict,
            )
            .await;
        assert!(msg.contains("75"), "{msg}");
        let unchanged = stack
            .auth_ok::<_, User>(ep::USERS_GET, &UserRef { user_id: user.id })
            .await;
        assert_eq!(
            (unchanged.tokens, unchanged.role),
            (75, Role::User),
            "nothing half-written"
        );
        let down: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    tokens_delta: Some(-75),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(down.tokens, 0);
    })
    .await;
}

#[tokio::test]
async fn a_charge_beyond_the_balance_is_refused_naming_the_balance() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("mona", 20).await;
        let msg = stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(user.id, 100, "job-1"),
                ErrorCode::InsufficientTokens,
            )
            .await;
        assert!(
            msg.contains("balance is 20 tokens; this costs 100"),
            "{msg}"
        );
        assert_eq!(stack.auth_balance(user.id).await, 20);
        // The refused key is not burnt: after a top-up the same key charges.
        let _: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    tokens_delta: Some(80),
                    ..Default::default()
                },
            )
            .await;
        let r: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-1"))
            .await;
        assert_eq!(
            (r.tokens_used, r.remaining_tokens, r.replayed),
            (100, 0, false)
        );
        stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(user.id, 0, "job-2"),
                ErrorCode::BadRequest,
            )
            .await;
        stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(user.id, 1, "refund:x"),
                ErrorCode::BadRequest,
            )
            .await;
        stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(99, 1, "job-3"),
                ErrorCode::NotFound,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_repeated_key_charges_once_even_when_sent_concurrently() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("nina", 1000).await;
        let first: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-a"))
            .await;
        assert_eq!(
            (first.tokens_used, first.remaining_tokens, first.replayed),
            (100, 900, false)
        );
        let again: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-a"))
            .await;
        assert_eq!(
            (again.tokens_used, again.remaining_tokens, again.replayed),
            (100, 900, true)
        );

        let results = futures::future::join_all((0..20).map(|_| {
            let stack = &stack;
            async move {
                stack
                    .auth_call::<_, CreditResult>(
                        ep::CREDITS_CHARGE,
                        &change(user.id, 100, "job-b"),
                    )
                    .await
            }
        }))
        .await;
        let fresh = results
            .iter()
            .filter(|r| matches!(r, Ok(r) if !r.replayed))
            .count();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(fresh, 1, "{results:?}");
        assert_eq!(stack.auth_balance(user.id).await, 800);

        // The same key for a different amount is a conflict, not a replay.
        stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(user.id, 5, "job-a"),
                ErrorCode::Conflict,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_refund_is_applied_once_and_only_for_an_applied_charge() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("oscar", 300).await;
        stack
            .auth_fails(
                ep::CREDITS_REFUND,
                &change(user.id, 100, "job-x"),
                ErrorCode::NotFound,
            )
            .await;
        let _: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-x"))
            .await;
        assert_eq!(stack.auth_balance(user.id).await, 200);
        stack
            .auth_fails(
                ep::CREDITS_REFUND,
                &change(1, 100, "job-x"),
                ErrorCode::NotFound,
            )
            .await;

        let r: CreditResult = stack
            .auth_ok(ep::CREDITS_REFUND, &change(user.id, 100, "job-x"))
            .await;
        assert_eq!(
            (r.tokens_used, r.remaining_tokens, r.replayed),
            (100, 300, false)
        );
        let r: CreditResult = stack
            .auth_ok(ep::CREDITS_REFUND, &change(user.id, 100, "job-x"))
            .await;
        assert_eq!(
            (r.tokens_used, r.remaining_tokens, r.replayed),
            (100, 300, true)
        );
        // Charging the refunded key again is refused: replaying its old charge would take
        // nothing and let the work run free (a retried submission after its refund).
        let refused = stack
            .auth_fails(
                ep::CREDITS_CHARGE,
                &change(user.id, 100, "job-x"),
                ErrorCode::Conflict,
            )
            .await;
        assert!(refused.contains("was refunded"), "{refused}");
        assert_eq!(stack.auth_balance(user.id).await, 300);
    })
    .await;
}

#[tokio::test]
async fn an_admin_is_charged_nothing_and_the_key_is_still_recorded() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let _: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: 1,
                    tokens_delta: Some(40),
                    ..Default::default()
                },
            )
            .await;
        let r: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(1, 100, "admin-job"))
            .await;
        assert_eq!(
            (r.tokens_used, r.remaining_tokens, r.replayed),
            (0, 40, false)
        );
        let r: CreditResult = stack
            .auth_ok(ep::CREDITS_CHARGE, &change(1, 100, "admin-job"))
            .await;
        assert_eq!(
            (r.tokens_used, r.remaining_tokens, r.replayed),
            (0, 40, true)
        );
        let refund: CreditResult = stack
            .auth_ok(ep::CREDITS_REFUND, &change(1, 100, "admin-job"))
            .await;
        assert_eq!((refund.tokens_used, refund.remaining_tokens), (0, 40));
    })
    .await;
}

#[tokio::test]
async fn with_two_replicas_200_concurrent_charges_of_100_against_1000_succeed_exactly_10_times() {
    TestStack::run(LIMIT, |stack| async move {
        let a = stack.spawn("gantry-auth", &[]);
        let b = stack.spawn("gantry-auth", &[]);
        a.wait_ready(READY).await;
        b.wait_ready(READY).await;
        let user = stack.auth_user("paul", 1000).await;

        let results = futures::future::join_all((0..200).map(|i| {
            let stack = &stack;
            async move {
                stack
                    .auth_call::<_, CreditResult>(
                        ep::CREDITS_CHARGE,
                        &change(user.id, 100, &format!("job-{i}")),
                    )
                    .await
            }
        }))
        .await;
        let succeeded = results.iter().filter(|r| r.is_ok()).count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(f) if f.code == ErrorCode::InsufficientTokens))
            .count();
        let other: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|f| f.code != ErrorCode::InsufficientTokens)
            .collect();
        assert!(other.is_empty(), "unexpected failures: {other:?}");
        assert_eq!(succeeded, 10);
        assert_eq!(refused, 190);
        assert_eq!(stack.auth_balance(user.id).await, 0);
        let remaining: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.remaining_tokens)
            .collect();
        let mut sorted = remaining.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..10).map(|i| i * 100).collect::<Vec<_>>(),
            "each success saw its own balance"
        );

        let per_replica = requests_per_replica(
            stack.client(),
            "gantry-auth",
            &subjects::auth(ep::CREDITS_CHARGE),
        )
        .await;
        assert_eq!(per_replica.len(), 2, "both replicas answer $SRV.STATS");
        assert!(
            per_replica.iter().all(|n| *n > 0),
            "both replicas served charges: {per_replica:?}"
        );
        assert_eq!(per_replica.iter().sum::<u64>(), 200);
        drop((a, b));
    })
    .await;
}

#[tokio::test]
async fn a_charge_interrupted_between_its_steps_is_finished_once_by_a_retry() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("quinn", 1000).await;

        // What a replica that died mid-charge leaves behind: one entry written but the balance
        // untouched; one entry written and the balance already moved (with its mark), not yet applied.
        stack.store_script("auth",
            r#"
import sys, time, hashlib
from pymongo import MongoClient
db = MongoClient(sys.argv[1])[sys.argv[2]]
uid = int(sys.argv[3]); now = int(time.time() * 1000)
for key in ("died-before-balance", "died-after-balance"):
    db.ledger.insert_one({"key": key, "user_id": uid, "kind": "charge", "amount": 100, "delta": -100,
        "reason": "test", "state": "pending", "lease_until_ms": now - 1000, "created_at_ms": now - 20000,
        "applied_at_ms": 0, "settled_at_ms": 0})
mark = "ledger_marks." + hashlib.sha256(b"died-after-balance").hexdigest()
db.users.update_one({"_id": uid}, {"$inc": {"tokens": -100}, "$set": {mark: now}})
"#,
            &[&user.id.to_string()],
        )
        .await;
        assert_eq!(stack.auth_balance(user.id).await, 900);

        let a: CreditResult = stack.auth_ok(ep::CREDITS_CHARGE,
            &change(user.id, 100, "died-before-balance"),
        )
        .await;
        assert_eq!((a.tokens_used, a.remaining_tokens), (100, 800));
        let b: CreditResult = stack.auth_ok(ep::CREDITS_CHARGE,
            &change(user.id, 100, "died-after-balance"),
        )
        .await;
        assert_eq!(
            (b.tokens_used, b.remaining_tokens),
            (100, 800),
            "the balance had moved already: not again"
        );
        for key in ["died-before-balance", "died-after-balance"] {
            let r: CreditResult = stack.auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, key)).await;
            assert!(r.replayed);
            assert_eq!(r.remaining_tokens, 800);
        }
        let refund: CreditResult = stack.auth_ok(ep::CREDITS_REFUND,
            &change(user.id, 100, "died-after-balance"),
        )
        .await;
        assert_eq!(refund.remaining_tokens, 900);
    })
    .await;
}

#[tokio::test]
async fn every_balance_change_is_in_the_ledger_with_user_delta_reason_key_and_time() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("rosa", 500).await;
        let _: CreditResult = stack.auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-1")).await;
        let _: CreditResult = stack.auth_ok(ep::CREDITS_CHARGE, &change(user.id, 100, "job-1")).await;
        let _: CreditResult = stack.auth_ok(ep::CREDITS_REFUND, &change(user.id, 100, "job-1")).await;
        let _: User = stack.auth_ok(ep::USERS_UPDATE,
            &UpdateUser {
                id: user.id,
                tokens_delta: Some(-50),
                reason: Some("cleanup".into()),
                actor_id: Some(1),
                ..Default::default()
            },
        )
        .await;
        let _ = stack.auth_call::<_, CreditResult>(ep::CREDITS_CHARGE,
            &change(user.id, 1000, "too-much"),
        )
        .await
        .unwrap_err();

        let out = stack.store_script("auth",
            r#"
import sys, json
from pymongo import MongoClient
db = MongoClient(sys.argv[1])[sys.argv[2]]
rows = [{k: d.get(k) for k in ("key", "user_id", "kind", "delta", "reason", "state", "created_at_ms", "actor_id")}
        for d in db.ledger.find({"user_id": int(sys.argv[3])})]
print(json.dumps(rows))
"#,
            &[&user.id.to_string()],
        )
        .await;
        let rows: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
        let mut seen: Vec<(String, String, i64, String)> = rows
            .iter()
            .map(|r| {
                assert_eq!(r["user_id"], user.id, "{r}");
                assert_eq!(r["state"], "applied", "{r}");
                assert!(
                    r["created_at_ms"].as_i64().unwrap() > 1_600_000_000_000,
                    "{r}"
                );
                let key = r["key"].as_str().unwrap();
                let key = if key.starts_with("adjust:") {
                    "adjust:*"
                } else {
                    key
                };
                (
                    key.to_owned(),
                    r["kind"].as_str().unwrap().to_owned(),
                    r["delta"].as_i64().unwrap(),
                    r["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        seen.sort();
        let want = [
            ("adjust:*", "adjust", -50, "cleanup"),
            ("adjust:*", "adjust", 500, "opening balance"),
            ("job-1", "charge", -100, "test"),
            ("refund:job-1", "refund", 100, "test"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, c, d, r)| (k.to_string(), c.to_string(), *d, r.to_string()))
            .collect();
        assert_eq!(
            seen, want,
            "the refused charge is not recorded; the repeated one once"
        );
        assert_eq!(stack.auth_balance(user.id).await, 450);
    })
    .await;
}
