//! The auth service's first admin and its life as a process, through the real `gantry-auth`
//! binary, a real nats-server and the real store: the configured or generated admin credentials,
//! replicas starting at once, restarts, an unreachable store, and SIGTERM.

use std::time::Duration;

use gantry_contracts::auth::{
    ApiTokenList, Principal, RevokeApiToken, Role, UserList, UserRef, VerifyRequest,
};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::subjects::auth as ep;
use gantry_testing::auth::bearer;
use gantry_testing::{free_port, wait_until, TestStack, ADMIN_PASSWORD, ADMIN_TOKEN, READY};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn the_first_admin_exists_with_the_configured_token_and_password() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;

        let p = stack
            .verify(bearer(ADMIN_TOKEN))
            .await
            .expect("the configured admin token verifies");
        assert_eq!(p.user.id, 1);
        assert_eq!(p.user.username, "admin");
        assert_eq!(p.user.email, "admin@example.com");
        assert_eq!(p.user.role, Role::Admin);
        assert!(p.user.active);
        assert_eq!(p.via, "bearer");
        assert!(p.cache_seconds > 0);

        let list: UserList = stack.auth_ok(ep::USERS_LIST, &json!({})).await;
        assert_eq!(list.users.len(), 1);
        assert_eq!(list.users[0].id, 1);

        let tokens: ApiTokenList = stack
            .auth_ok(ep::TOKENS_LIST, &UserRef { user_id: 1 })
            .await;
        assert_eq!(tokens.tokens.len(), 1);
        assert_eq!(tokens.tokens[0].prefix, format!("{}...", &ADMIN_TOKEN[..8]));

        let session = stack
            .login("admin", ADMIN_PASSWORD, "10.0.0.1")
            .await
            .expect("admin logs in");
        assert_eq!(session.user.id, 1);
    })
    .await;
}

#[tokio::test]
async fn two_replicas_starting_at_once_create_one_admin_and_a_restart_changes_nothing() {
    TestStack::run(LIMIT, |stack| async move {
        let a = stack.spawn("gantry-auth", &[]);
        let b = stack.spawn("gantry-auth", &[]);
        a.wait_ready(READY).await;
        b.wait_ready(READY).await;

        let list: UserList = stack.auth_ok(ep::USERS_LIST, &json!({})).await;
        assert_eq!(list.users.len(), 1, "{:?}", list.users);
        assert_eq!(list.users[0].id, 1);
        let tokens: ApiTokenList = stack
            .auth_ok(ep::TOKENS_LIST, &UserRef { user_id: 1 })
            .await;
        assert_eq!(tokens.tokens.len(), 1);

        drop((a, b));
        let c = stack.spawn("gantry-auth", &[]);
        c.wait_ready(READY).await;
        let list: UserList = stack.auth_ok(ep::USERS_LIST, &json!({})).await;
        assert_eq!(list.users.len(), 1);
        assert!(stack.verify(bearer(ADMIN_TOKEN)).await.is_ok());
        let next = stack.auth_user("second", 0).await;
        assert_eq!(next.id, 2, "ids continue after the first admin");
    })
    .await;
}

#[tokio::test]
async fn a_generated_admin_password_is_printed_once_and_a_token_configured_later_is_added() {
    TestStack::run(LIMIT, |stack| async move {
        let auth = stack.spawn(
            "gantry-auth",
            &[
                ("GANTRY_ADMIN_PASSWORD", ""),
                ("GANTRY_ADMIN_API_TOKEN", ""),
            ],
        );
        auth.wait_ready(READY).await;
        let out = auth.output();
        let line = out
            .lines()
            .find(|l| l.contains("generated password: "))
            .unwrap_or_else(|| panic!("no generated password printed:\n{out}"));
        let password = line
            .rsplit("generated password: ")
            .next()
            .unwrap()
            .trim()
            .to_owned();
        assert!(password.len() >= 16);
        assert_eq!(
            out.matches(&password).count(),
            1,
            "the password must appear once, not in the logs:\n{out}"
        );

        assert!(stack.login("admin", &password, "10.0.0.1").await.is_ok());

        assert_eq!(
            stack.verify(bearer(ADMIN_TOKEN)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );

        // Restarted with GANTRY_ADMIN_API_TOKEN: the existing admin gets it; no new password.
        drop(auth);
        let again = stack.spawn("gantry-auth", &[("GANTRY_ADMIN_PASSWORD", "")]);
        again.wait_ready(READY).await;
        assert!(
            !again.output().contains("generated password"),
            "printed again on restart"
        );
        let p = stack
            .verify(bearer(ADMIN_TOKEN))
            .await
            .expect("the token was added to the existing admin");
        assert_eq!(p.user.id, 1);

        // Once its owner revokes it, a restart does not bring it back.
        let listed: ApiTokenList = stack
            .auth_ok(ep::TOKENS_LIST, &UserRef { user_id: 1 })
            .await;
        let _: Value = stack
            .auth_ok(
                ep::TOKENS_REVOKE,
                &RevokeApiToken {
                    user_id: 1,
                    token_id: listed.tokens[0].id.clone(),
                },
            )
            .await;
        drop(again);
        let third = stack.spawn("gantry-auth", &[("GANTRY_ADMIN_PASSWORD", "")]);
        third.wait_ready(READY).await;
        assert_eq!(
            stack.verify(bearer(ADMIN_TOKEN)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );
    })
    .await;
}

#[tokio::test]
async fn endpoints_register_and_health_answers_while_the_store_is_unreachable_and_sigterm_still_stops_it(
) {
    TestStack::run(LIMIT, |stack| async move {
        let dead = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
        let auth = stack.spawn("gantry-auth", &[("MONGODB_URI", dead.as_str())]);
        let status = wait_until(Duration::from_secs(20), || async { auth.readyz().await }).await;
        assert_eq!(
            status,
            Some(503),
            "health should answer at once, not ready:\n{}",
            auth.output()
        );
        let f = wait_until(Duration::from_secs(20), || async {
            match stack
                .auth_call::<_, Principal>(
                    ep::VERIFY,
                    &VerifyRequest {
                        credential: bearer(ADMIN_TOKEN),
                    },
                )
                .await
            {
                Err(f) if f.code == ErrorCode::Unavailable => Some(f),
                _ => None,
            }
        })
        .await;
        assert!(
            f.is_some(),
            "verify should answer unavailable:\n{}",
            auth.output()
        );

        // Still waiting for the store, it stops promptly and cleanly.
        let mut auth = auth;
        let status = auth
            .terminate(Duration::from_secs(8))
            .await
            .expect("stops within 8 s of SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", auth.output());
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_a_ready_auth_with_code_zero() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        stack.auth_user("sam", 10).await;
        let mut auth = stack.take("gantry-auth");
        let status = auth
            .terminate(Duration::from_secs(8))
            .await
            .expect("stops within 8 s of SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", auth.output());
        assert!(
            !auth.output().contains("sam-password"),
            "a password reached the output"
        );
    })
    .await;
}
