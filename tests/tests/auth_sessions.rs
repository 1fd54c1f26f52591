//! Logging in through the auth service over NATS: sessions that slide and expire, the login
//! limiter, inactive users, API tokens and revocations.

use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::auth::{
    ApiTokenList, CreateApiToken, CreatedApiToken, LogoutRequest, Revocation, RevokeApiToken, Role,
    UpdateUser, User, UserList, UserRef, REVOCATIONS,
};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::subjects::auth as ep;
use gantry_testing::auth::{bearer, session};
use gantry_testing::{wait_until, TestStack, READY};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn a_user_logs_in_verifies_the_session_and_after_logout_it_no_longer_verifies() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("carol", 0).await;
        assert_eq!(user.id, 2);
        assert_eq!(user.role, Role::User);

        let s = stack
            .login("carol", "carol-password", "10.0.0.2")
            .await
            .unwrap();
        assert_eq!(s.user.id, user.id);
        assert_eq!(s.session_id.len(), 64);
        assert_eq!(s.expires_in, 12 * 3600);

        let p = stack.verify(session(&s.session_id)).await.unwrap();
        assert_eq!(p.user.username, "carol");
        assert_eq!(p.via, "session");

        let mut revocations = stack.client().subscribe(REVOCATIONS).await.unwrap();
        stack.client().flush().await.unwrap();
        let _: Value = stack
            .auth_ok(
                ep::LOGOUT,
                &LogoutRequest {
                    session_id: s.session_id.clone(),
                },
            )
            .await;
        let f = stack.verify(session(&s.session_id)).await.unwrap_err();
        assert_eq!(f.code, ErrorCode::Unauthorized);
        let msg = tokio::time::timeout(Duration::from_secs(5), revocations.next())
            .await
            .unwrap()
            .unwrap();
        let r: Revocation = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(r.user_id, user.id);

        // A session id is never a bearer token, and made-up ones fail the same way.
        assert_eq!(
            stack.verify(bearer(&s.session_id)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            stack
                .verify(session("0".repeat(64).as_str()))
                .await
                .unwrap_err()
                .code,
            ErrorCode::Unauthorized
        );

        let out = stack.auth().output();
        assert!(
            !out.contains(&s.session_id) && !out.contains("carol-password"),
            "a secret reached the logs:\n{out}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_session_slides_while_used_and_expires_after_inactivity() {
    TestStack::run(LIMIT, |stack| async move {
        let auth = stack.spawn("gantry-auth", &[("GANTRY_SESSION_TTL", "3")]);
        auth.wait_ready(READY).await;
        stack.auth_user("dave", 0).await;
        let s = stack
            .login("dave", "dave-password", "10.0.0.3")
            .await
            .unwrap();
        assert_eq!(s.expires_in, 3);
        // The time that passes is what is tested (and polling would slide the session), so these
        // sleeps stay: used every second for 5 s it lives on, then idle past its TTL it is gone.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack
                .verify(session(&s.session_id))
                .await
                .expect("still in use, so still valid");
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let f = stack.verify(session(&s.session_id)).await.unwrap_err();
        assert_eq!(f.code, ErrorCode::Unauthorized);
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_repeated_failures_are_too_many_requests() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        stack.auth_user("erin", 0).await;

        let wrong = stack
            .auth_fails(
                ep::LOGIN,
                &json!({"username": "erin", "password": "nope-nope", "client": "10.0.0.4"}),
                ErrorCode::Unauthorized,
            )
            .await;
        let unknown = stack
            .auth_fails(
                ep::LOGIN,
                &json!({"username": "nobody", "password": "nope-nope", "client": "10.0.0.5"}),
                ErrorCode::Unauthorized,
            )
            .await;
        assert_eq!(
            wrong, unknown,
            "the message must not tell whether the user exists"
        );

        for _ in 0..4 {
            let f = stack
                .login("erin", "nope-nope", "10.0.0.4")
                .await
                .unwrap_err();
            assert_eq!(f.code, ErrorCode::Unauthorized);
        }
        // Five failures for erin from 10.0.0.4: the sixth attempt from there is refused, even
        // with the right password...
        let f = stack
            .login("erin", "erin-password", "10.0.0.4")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::TooManyRequests, "{f}");
        assert!(f.message.contains("try again in"), "{f}");
        // ...for a while only: once the back-off is over, the right password gets in from there
        // too (the refused tries in between do not count).
        let back = wait_until(Duration::from_secs(20), || async {
            stack.login("erin", "erin-password", "10.0.0.4").await.ok()
        })
        .await;
        assert!(back.is_some(), "the right password stayed locked out");
        // The success forgave the earlier failures: five new ones use the allowance up again.
        for _ in 0..5 {
            let _ = stack.login("erin", "nope-nope", "10.0.0.4").await;
        }
        let f = stack
            .login("erin", "nope-nope", "10.0.0.4")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::TooManyRequests, "{f}");
        // ...but the guesses lock nobody out: erin logs in from her own address.
        assert!(stack
            .login("erin", "erin-password", "10.0.0.6")
            .await
            .is_ok());

        // Another user is not affected.
        stack.auth_user("frank", 0).await;
        assert!(stack
            .login("frank", "frank-password", "10.0.0.7")
            .await
            .is_ok());

        // Per client: 20 failures from one address, spread over usernames, shut that address out.
        for i in 0..20 {
            let f = stack
                .login(&format!("ghost{i}"), "nope-nope", "10.9.9.9")
                .await
                .unwrap_err();
            assert_eq!(f.code, ErrorCode::Unauthorized, "attempt {i}: {f}");
        }
        let f = stack
            .login("frank", "frank-password", "10.9.9.9")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::TooManyRequests);
        assert!(stack
            .login("frank", "frank-password", "10.0.0.8")
            .await
            .is_ok());
    })
    .await;
}

#[tokio::test]
async fn an_inactive_user_cannot_log_in() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("gina", 0).await;
        let _: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    active: Some(false),
                    ..Default::default()
                },
            )
            .await;
        let f = stack
            .login("gina", "gina-password", "10.0.0.9")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::Unauthorized);
    })
    .await;
}

#[tokio::test]
async fn a_revoked_token_and_a_deactivated_user_are_unauthorized_even_after_the_boolean_quirk() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        let user = stack.auth_user("hank", 0).await;
        let mut revocations = stack.client().subscribe(REVOCATIONS).await.unwrap();
        stack.client().flush().await.unwrap();

        let t: CreatedApiToken = stack
            .auth_ok(
                ep::TOKENS_CREATE,
                &CreateApiToken {
                    user_id: user.id,
                    name: "ci".into(),
                },
            )
            .await;
        assert!(
            t.secret.starts_with("gnt_") && t.secret.len() == 68,
            "{}",
            t.secret
        );
        assert_eq!(t.token.prefix, format!("{}...", &t.secret[..8]));
        assert!(t.token.last_used_at.is_none());
        let p = stack.verify(bearer(&t.secret)).await.unwrap();
        assert_eq!(p.user.id, user.id);
        let listed: ApiTokenList = stack
            .auth_ok(ep::TOKENS_LIST, &UserRef { user_id: user.id })
            .await;
        assert_eq!(listed.tokens.len(), 1);
        assert_eq!(listed.tokens[0].id, t.token.id);
        assert!(
            listed.tokens[0].last_used_at.is_some(),
            "verify records the use"
        );
        assert!(!serde_json::to_string(&listed)
            .unwrap()
            .contains(&t.secret[8..]));

        // Only the owner revokes; unknown ids are not found.
        stack
            .auth_fails(
                ep::TOKENS_REVOKE,
                &RevokeApiToken {
                    user_id: 1,
                    token_id: t.token.id.clone(),
                },
                ErrorCode::NotFound,
            )
            .await;
        stack
            .auth_fails(
                ep::TOKENS_REVOKE,
                &RevokeApiToken {
                    user_id: user.id,
                    token_id: "nope".into(),
                },
                ErrorCode::NotFound,
            )
            .await;
        let _: Value = stack
            .auth_ok(
                ep::TOKENS_REVOKE,
                &RevokeApiToken {
                    user_id: user.id,
                    token_id: t.token.id.clone(),
                },
            )
            .await;
        assert_eq!(
            stack.verify(bearer(&t.secret)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let listed: ApiTokenList = stack
            .auth_ok(ep::TOKENS_LIST, &UserRef { user_id: user.id })
            .await;
        assert!(listed.tokens.is_empty());
        let r: Revocation = serde_json::from_slice(
            &tokio::time::timeout(Duration::from_secs(5), revocations.next())
                .await
                .unwrap()
                .unwrap()
                .payload,
        )
        .unwrap();
        assert_eq!(r.user_id, user.id);

        // Deactivation goes through `$set`, which the local store reads back as 0/1.
        let t2: CreatedApiToken = stack
            .auth_ok(
                ep::TOKENS_CREATE,
                &CreateApiToken {
                    user_id: user.id,
                    name: "second".into(),
                },
            )
            .await;
        let s = stack
            .login("hank", "hank-password", "10.0.1.1")
            .await
            .unwrap();
        let updated: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    active: Some(false),
                    ..Default::default()
                },
            )
            .await;
        assert!(!updated.active);
        assert_eq!(
            stack.verify(bearer(&t2.secret)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            stack.verify(session(&s.session_id)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let got: User = stack
            .auth_ok(ep::USERS_GET, &UserRef { user_id: user.id })
            .await;
        assert!(!got.active);
        let list: UserList = stack.auth_ok(ep::USERS_LIST, &json!({})).await;
        assert!(!list.users.iter().find(|u| u.id == user.id).unwrap().active);
        stack
            .auth_fails(
                ep::TOKENS_CREATE,
                &CreateApiToken {
                    user_id: user.id,
                    name: "x".into(),
                },
                ErrorCode::Forbidden,
            )
            .await;

        // Reactivated, the remaining token works again (the revoked one does not).
        let back: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: user.id,
                    active: Some(true),
                    ..Default::default()
                },
            )
            .await;
        assert!(back.active);
        assert!(stack.verify(bearer(&t2.secret)).await.is_ok());
        assert_eq!(
            stack.verify(bearer(&t.secret)).await.unwrap_err().code,
            ErrorCode::Unauthorized
        );

        let out = stack.auth().output();
        assert!(
            !out.contains(&t.secret[4..]) && !out.contains(&t2.secret[4..]),
            "a token reached the logs:\n{out}"
        );
    })
    .await;
}
