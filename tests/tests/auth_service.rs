//! The auth service over NATS, through the real `gantry-auth` binary, a real nats-server and the
//! real store: the first admin and its token, users, sessions and the login limiter, API tokens,
//! revocations, and the credit ledger under concurrency across two replicas.

use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::auth::{
    ApiTokenList, CreateApiToken, CreateUser, CreatedApiToken, Credential, CreditChange,
    CreditResult, LoginRequest, LoginResponse, LogoutRequest, Principal, Revocation,
    RevokeApiToken, Role, UpdateUser, User, UserList, UserRef, VerifyRequest, REVOCATIONS,
};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::subjects::{self, auth as ep};
use gantry_testing::{
    free_port, requests_per_replica, wait_until, ServiceProcess, Stack, ADMIN_PASSWORD, ADMIN_TOKEN,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(60);

/// One request to an auth endpoint; a service error comes back as its `ServiceFailure`.
async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    endpoint: &str,
    req: &Req,
) -> Result<Resp, ServiceFailure> {
    let payload = serde_json::to_vec(req).unwrap();
    // No responders (not registered yet) and timeouts read as unavailable, as the api sees them.
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(Duration::from_secs(60)));
    let reply = match client.send_request(subjects::auth(endpoint), request).await {
        Ok(reply) => reply,
        Err(e) => {
            return Err(ServiceFailure::new(
                ErrorCode::Unavailable,
                format!("{endpoint}: {e}"),
            ))
        }
    };
    if let Some(text) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
    {
        return Err(ServiceFailure::from_header(text.as_str()));
    }
    Ok(serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "{endpoint} answered something undecodable ({e}): {:?}",
            reply.payload
        )
    }))
}

/// Like [`call`], for a request that must succeed.
async fn ok<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    endpoint: &str,
    req: &Req,
) -> Resp {
    call(client, endpoint, req)
        .await
        .unwrap_or_else(|f| panic!("{endpoint} failed: {f}"))
}

/// Like [`call`], for a request that must fail with `code`; returns the message.
async fn fails<Req: Serialize>(
    client: &async_nats::Client,
    endpoint: &str,
    req: &Req,
    code: ErrorCode,
) -> String {
    match call::<Req, Value>(client, endpoint, req).await {
        Ok(v) => panic!("{endpoint} succeeded, expected {code}: {v}"),
        Err(f) => {
            assert_eq!(f.code, code, "{endpoint}: {f}");
            f.message
        }
    }
}

async fn verify(
    client: &async_nats::Client,
    credential: Credential,
) -> Result<Principal, ServiceFailure> {
    call(client, ep::VERIFY, &VerifyRequest { credential }).await
}

fn bearer(token: &str) -> Credential {
    Credential::Bearer {
        token: token.into(),
    }
}

fn session(id: &str) -> Credential {
    Credential::Session {
        session_id: id.into(),
    }
}

/// A stack with one auth replica, ready.
async fn started() -> (Stack, ServiceProcess, async_nats::Client) {
    let stack = Stack::start().await;
    let auth = stack.spawn("gantry-auth", &[]);
    auth.wait_ready(READY).await;
    let client = stack.nats.client().await;
    (stack, auth, client)
}

async fn create_user(client: &async_nats::Client, name: &str, tokens: i64) -> User {
    ok(
        client,
        ep::USERS_CREATE,
        &CreateUser {
            username: name.into(),
            email: format!("{name}@example.com"),
            password: format!("{name}-password"),
            role: None,
            tokens: Some(tokens),
        },
    )
    .await
}

async fn login(
    client: &async_nats::Client,
    name: &str,
    password: &str,
    from: &str,
) -> Result<LoginResponse, ServiceFailure> {
    call(
        client,
        ep::LOGIN,
        &LoginRequest {
            username: name.into(),
            password: password.into(),
            client: from.into(),
        },
    )
    .await
}

async fn balance(client: &async_nats::Client, user_id: i64) -> i64 {
    ok::<_, User>(client, ep::USERS_GET, &UserRef { user_id })
        .await
        .tokens
}

fn change(user_id: i64, amount: i64, key: &str) -> CreditChange {
    CreditChange {
        user_id,
        amount,
        key: key.into(),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn the_first_admin_exists_with_the_configured_token_and_password() {
    let (_stack, _auth, client) = started().await;

    let p = verify(&client, bearer(ADMIN_TOKEN))
        .await
        .expect("the configured admin token verifies");
    assert_eq!(p.user.id, 1);
    assert_eq!(p.user.username, "admin");
    assert_eq!(p.user.email, "admin@example.com");
    assert_eq!(p.user.role, Role::Admin);
    assert!(p.user.active);
    assert_eq!(p.via, "bearer");
    assert!(p.cache_seconds > 0);

    let list: UserList = ok(&client, ep::USERS_LIST, &json!({})).await;
    assert_eq!(list.users.len(), 1);
    assert_eq!(list.users[0].id, 1);

    let tokens: ApiTokenList = ok(&client, ep::TOKENS_LIST, &UserRef { user_id: 1 }).await;
    assert_eq!(tokens.tokens.len(), 1);
    assert_eq!(tokens.tokens[0].prefix, format!("{}...", &ADMIN_TOKEN[..8]));

    let session = login(&client, "admin", ADMIN_PASSWORD, "10.0.0.1")
        .await
        .expect("admin logs in");
    assert_eq!(session.user.id, 1);
}

#[tokio::test]
async fn two_replicas_starting_at_once_create_one_admin_and_a_restart_changes_nothing() {
    let stack = Stack::start().await;
    let a = stack.spawn("gantry-auth", &[]);
    let b = stack.spawn("gantry-auth", &[]);
    a.wait_ready(READY).await;
    b.wait_ready(READY).await;
    let client = stack.nats.client().await;

    let list: UserList = ok(&client, ep::USERS_LIST, &json!({})).await;
    assert_eq!(list.users.len(), 1, "{:?}", list.users);
    assert_eq!(list.users[0].id, 1);
    let tokens: ApiTokenList = ok(&client, ep::TOKENS_LIST, &UserRef { user_id: 1 }).await;
    assert_eq!(tokens.tokens.len(), 1);

    drop((a, b));
    let c = stack.spawn("gantry-auth", &[]);
    c.wait_ready(READY).await;
    let list: UserList = ok(&client, ep::USERS_LIST, &json!({})).await;
    assert_eq!(list.users.len(), 1);
    assert!(verify(&client, bearer(ADMIN_TOKEN)).await.is_ok());
    let next = create_user(&client, "second", 0).await;
    assert_eq!(next.id, 2, "ids continue after the first admin");
}

#[tokio::test]
async fn a_generated_admin_password_is_printed_once_and_a_token_configured_later_is_added() {
    let stack = Stack::start().await;
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

    let client = stack.nats.client().await;
    assert!(login(&client, "admin", &password, "10.0.0.1").await.is_ok());

    assert_eq!(
        verify(&client, bearer(ADMIN_TOKEN)).await.unwrap_err().code,
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
    let p = verify(&client, bearer(ADMIN_TOKEN))
        .await
        .expect("the token was added to the existing admin");
    assert_eq!(p.user.id, 1);

    // Once its owner revokes it, a restart does not bring it back.
    let listed: ApiTokenList = ok(&client, ep::TOKENS_LIST, &UserRef { user_id: 1 }).await;
    let _: Value = ok(
        &client,
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
        verify(&client, bearer(ADMIN_TOKEN)).await.unwrap_err().code,
        ErrorCode::Unauthorized
    );
}

#[tokio::test]
async fn a_user_logs_in_verifies_the_session_and_after_logout_it_no_longer_verifies() {
    let (_stack, auth, client) = started().await;
    let user = create_user(&client, "carol", 0).await;
    assert_eq!(user.id, 2);
    assert_eq!(user.role, Role::User);

    let s = login(&client, "carol", "carol-password", "10.0.0.2")
        .await
        .unwrap();
    assert_eq!(s.user.id, user.id);
    assert_eq!(s.session_id.len(), 64);
    assert_eq!(s.expires_in, 12 * 3600);

    let p = verify(&client, session(&s.session_id)).await.unwrap();
    assert_eq!(p.user.username, "carol");
    assert_eq!(p.via, "session");

    let mut revocations = client.subscribe(REVOCATIONS).await.unwrap();
    client.flush().await.unwrap();
    let _: Value = ok(
        &client,
        ep::LOGOUT,
        &LogoutRequest {
            session_id: s.session_id.clone(),
        },
    )
    .await;
    let f = verify(&client, session(&s.session_id)).await.unwrap_err();
    assert_eq!(f.code, ErrorCode::Unauthorized);
    let msg = tokio::time::timeout(Duration::from_secs(5), revocations.next())
        .await
        .unwrap()
        .unwrap();
    let r: Revocation = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(r.user_id, user.id);

    // A session id is never a bearer token, and made-up ones fail the same way.
    assert_eq!(
        verify(&client, bearer(&s.session_id))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Unauthorized
    );
    assert_eq!(
        verify(&client, session("0".repeat(64).as_str()))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Unauthorized
    );

    let out = auth.output();
    assert!(
        !out.contains(&s.session_id) && !out.contains("carol-password"),
        "a secret reached the logs:\n{out}"
    );
}

#[tokio::test]
async fn a_session_slides_while_used_and_expires_after_inactivity() {
    let stack = Stack::start().await;
    let auth = stack.spawn("gantry-auth", &[("GANTRY_SESSION_TTL", "3")]);
    auth.wait_ready(READY).await;
    let client = stack.nats.client().await;
    create_user(&client, "dave", 0).await;
    let s = login(&client, "dave", "dave-password", "10.0.0.3")
        .await
        .unwrap();
    assert_eq!(s.expires_in, 3);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        verify(&client, session(&s.session_id))
            .await
            .expect("still in use, so still valid");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let f = verify(&client, session(&s.session_id)).await.unwrap_err();
    assert_eq!(f.code, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_repeated_failures_are_too_many_requests() {
    let (_stack, _auth, client) = started().await;
    create_user(&client, "erin", 0).await;

    let wrong = fails(
        &client,
        ep::LOGIN,
        &json!({"username": "erin", "password": "nope-nope", "client": "10.0.0.4"}),
        ErrorCode::Unauthorized,
    )
    .await;
    let unknown = fails(
        &client,
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
        let f = login(&client, "erin", "nope-nope", "10.0.0.4")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::Unauthorized);
    }
    // Five failures for erin: the sixth attempt is refused, even with the right password.
    let f = login(&client, "erin", "erin-password", "10.0.0.6")
        .await
        .unwrap_err();
    assert_eq!(f.code, ErrorCode::TooManyRequests, "{f}");

    // Another user is not affected.
    create_user(&client, "frank", 0).await;
    assert!(login(&client, "frank", "frank-password", "10.0.0.7")
        .await
        .is_ok());

    // Per client: 20 failures from one address, spread over usernames, shut that address out.
    for i in 0..20 {
        let f = login(&client, &format!("ghost{i}"), "nope-nope", "10.9.9.9")
            .await
            .unwrap_err();
        assert_eq!(f.code, ErrorCode::Unauthorized, "attempt {i}: {f}");
    }
    let f = login(&client, "frank", "frank-password", "10.9.9.9")
        .await
        .unwrap_err();
    assert_eq!(f.code, ErrorCode::TooManyRequests);
    assert!(login(&client, "frank", "frank-password", "10.0.0.8")
        .await
        .is_ok());
}

#[tokio::test]
async fn an_inactive_user_cannot_log_in() {
    let (_stack, _auth, client) = started().await;
    let user = create_user(&client, "gina", 0).await;
    let _: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: user.id,
            active: Some(false),
            ..Default::default()
        },
    )
    .await;
    let f = login(&client, "gina", "gina-password", "10.0.0.9")
        .await
        .unwrap_err();
    assert_eq!(f.code, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn a_revoked_token_and_a_deactivated_user_are_unauthorized_even_after_the_boolean_quirk() {
    let (_stack, auth, client) = started().await;
    let user = create_user(&client, "hank", 0).await;
    let mut revocations = client.subscribe(REVOCATIONS).await.unwrap();
    client.flush().await.unwrap();

    let t: CreatedApiToken = ok(
        &client,
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
    let p = verify(&client, bearer(&t.secret)).await.unwrap();
    assert_eq!(p.user.id, user.id);
    let listed: ApiTokenList = ok(&client, ep::TOKENS_LIST, &UserRef { user_id: user.id }).await;
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
    fails(
        &client,
        ep::TOKENS_REVOKE,
        &RevokeApiToken {
            user_id: 1,
            token_id: t.token.id.clone(),
        },
        ErrorCode::NotFound,
    )
    .await;
    fails(
        &client,
        ep::TOKENS_REVOKE,
        &RevokeApiToken {
            user_id: user.id,
            token_id: "nope".into(),
        },
        ErrorCode::NotFound,
    )
    .await;
    let _: Value = ok(
        &client,
        ep::TOKENS_REVOKE,
        &RevokeApiToken {
            user_id: user.id,
            token_id: t.token.id.clone(),
        },
    )
    .await;
    assert_eq!(
        verify(&client, bearer(&t.secret)).await.unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let listed: ApiTokenList = ok(&client, ep::TOKENS_LIST, &UserRef { user_id: user.id }).await;
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
    let t2: CreatedApiToken = ok(
        &client,
        ep::TOKENS_CREATE,
        &CreateApiToken {
            user_id: user.id,
            name: "second".into(),
        },
    )
    .await;
    let s = login(&client, "hank", "hank-password", "10.0.1.1")
        .await
        .unwrap();
    let updated: User = ok(
        &client,
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
        verify(&client, bearer(&t2.secret)).await.unwrap_err().code,
        ErrorCode::Unauthorized
    );
    assert_eq!(
        verify(&client, session(&s.session_id))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Unauthorized
    );
    let got: User = ok(&client, ep::USERS_GET, &UserRef { user_id: user.id }).await;
    assert!(!got.active);
    let list: UserList = ok(&client, ep::USERS_LIST, &json!({})).await;
    assert!(!list.users.iter().find(|u| u.id == user.id).unwrap().active);
    fails(
        &client,
        ep::TOKENS_CREATE,
        &CreateApiToken {
            user_id: user.id,
            name: "x".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;

    // Reactivated, the remaining token works again (the revoked one does not).
    let back: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: user.id,
            active: Some(true),
            ..Default::default()
        },
    )
    .await;
    assert!(back.active);
    assert!(verify(&client, bearer(&t2.secret)).await.is_ok());
    assert_eq!(
        verify(&client, bearer(&t.secret)).await.unwrap_err().code,
        ErrorCode::Unauthorized
    );

    let out = auth.output();
    assert!(
        !out.contains(&t.secret[4..]) && !out.contains(&t2.secret[4..]),
        "a token reached the logs:\n{out}"
    );
}

#[tokio::test]
async fn users_are_validated_and_duplicates_conflict() {
    let (_stack, _auth, client) = started().await;
    let good = json!({"username": "ivy", "email": "ivy@example.com", "password": "ivy-password", "tokens": 5});
    let cases = [
        json!({"username": "iv", "email": "a@b", "password": "long-enough"}),
        json!({"username": "ivy ivy", "email": "a@b", "password": "long-enough"}),
        json!({"username": "ivy2", "email": "no-at-sign", "password": "long-enough"}),
        json!({"username": "ivy2", "email": "a@b@c", "password": "long-enough"}),
        json!({"username": "ivy2", "email": "a@b", "password": "short"}),
        json!({"username": "ivy2", "email": "a@b", "password": "long-enough", "tokens": -1}),
        json!({"username": "ivy2", "email": "a@b", "password": "long-enough", "role": "root"}),
        json!({"nonsense": true}),
    ];
    for bad in &cases {
        fails(&client, ep::USERS_CREATE, bad, ErrorCode::BadRequest).await;
    }
    let ivy: User = ok(&client, ep::USERS_CREATE, &good).await;
    assert_eq!(
        (ivy.id, ivy.tokens, ivy.role, ivy.active),
        (2, 5, Role::User, true)
    );
    fails(
        &client,
        ep::USERS_CREATE,
        &json!({"username": "ivy", "email": "other@example.com", "password": "long-enough"}),
        ErrorCode::Conflict,
    )
    .await;
    fails(
        &client,
        ep::USERS_CREATE,
        &json!({"username": "other", "email": "ivy@example.com", "password": "long-enough"}),
        ErrorCode::Conflict,
    )
    .await;
    let admin2: User = ok(&client, ep::USERS_CREATE, &json!({"username": "jack", "email": "jack@example.com", "password": "long-enough", "role": "admin"})).await;
    assert_eq!((admin2.id, admin2.role), (3, Role::Admin));
    fails(
        &client,
        ep::USERS_GET,
        &UserRef { user_id: 99 },
        ErrorCode::NotFound,
    )
    .await;
    fails(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: 99,
            ..Default::default()
        },
        ErrorCode::NotFound,
    )
    .await;

    // Email and password changes; a taken email conflicts.
    fails(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: ivy.id,
            email: Some("jack@example.com".into()),
            ..Default::default()
        },
        ErrorCode::Conflict,
    )
    .await;
    let changed: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: ivy.id,
            email: Some("ivy@new.example".into()),
            password: Some("new-password".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(changed.email, "ivy@new.example");
    assert_eq!(
        login(&client, "ivy", "ivy-password", "10.0.2.1")
            .await
            .unwrap_err()
            .code,
        ErrorCode::Unauthorized
    );
    assert!(login(&client, "ivy", "new-password", "10.0.2.1")
        .await
        .is_ok());

    let list: UserList = ok(&client, ep::USERS_LIST, &json!({})).await;
    assert_eq!(
        list.users.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_or_deactivated() {
    let (_stack, _auth, client) = started().await;
    fails(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: 1,
            role: Some(Role::User),
            ..Default::default()
        },
        ErrorCode::Conflict,
    )
    .await;
    fails(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: 1,
            active: Some(false),
            ..Default::default()
        },
        ErrorCode::Conflict,
    )
    .await;
    let other = create_user(&client, "kate", 0).await;
    let promoted: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: other.id,
            role: Some(Role::Admin),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(promoted.role, Role::Admin);
    let demoted: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: 1,
            role: Some(Role::User),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(demoted.role, Role::User);
    fails(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: other.id,
            active: Some(false),
            ..Default::default()
        },
        ErrorCode::Conflict,
    )
    .await;
}

#[tokio::test]
async fn a_balance_adjustment_goes_through_the_ledger_and_never_below_zero() {
    let (_stack, _auth, client) = started().await;
    let user = create_user(&client, "liam", 50).await;
    let up: User = ok(
        &client,
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
    let msg = fails(
        &client,
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
    let unchanged = ok::<_, User>(&client, ep::USERS_GET, &UserRef { user_id: user.id }).await;
    assert_eq!(
        (unchanged.tokens, unchanged.role),
        (75, Role::User),
        "nothing half-written"
    );
    let down: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: user.id,
            tokens_delta: Some(-75),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(down.tokens, 0);
}

#[tokio::test]
async fn a_charge_beyond_the_balance_is_refused_naming_the_balance() {
    let (_stack, _auth, client) = started().await;
    let user = create_user(&client, "mona", 20).await;
    let msg = fails(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 100, "job-1"),
        ErrorCode::InsufficientTokens,
    )
    .await;
    assert!(
        msg.contains("balance is 20 tokens; this costs 100"),
        "{msg}"
    );
    assert_eq!(balance(&client, user.id).await, 20);
    // The refused key is not burnt: after a top-up the same key charges.
    let _: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: user.id,
            tokens_delta: Some(80),
            ..Default::default()
        },
    )
    .await;
    let r: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-1")).await;
    assert_eq!(
        (r.tokens_used, r.remaining_tokens, r.replayed),
        (100, 0, false)
    );
    fails(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 0, "job-2"),
        ErrorCode::BadRequest,
    )
    .await;
    fails(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 1, "refund:x"),
        ErrorCode::BadRequest,
    )
    .await;
    fails(
        &client,
        ep::CREDITS_CHARGE,
        &change(99, 1, "job-3"),
        ErrorCode::NotFound,
    )
    .await;
}

#[tokio::test]
async fn a_repeated_key_charges_once_even_when_sent_concurrently() {
    let (_stack, _auth, client) = started().await;
    let user = create_user(&client, "nina", 1000).await;
    let first: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-a")).await;
    assert_eq!(
        (first.tokens_used, first.remaining_tokens, first.replayed),
        (100, 900, false)
    );
    let again: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-a")).await;
    assert_eq!(
        (again.tokens_used, again.remaining_tokens, again.replayed),
        (100, 900, true)
    );

    let results = futures::future::join_all((0..20).map(|_| {
        let client = client.clone();
        async move {
            call::<_, CreditResult>(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-b"))
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
    assert_eq!(balance(&client, user.id).await, 800);

    // The same key for a different amount is a conflict, not a replay.
    fails(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 5, "job-a"),
        ErrorCode::Conflict,
    )
    .await;
}

#[tokio::test]
async fn a_refund_is_applied_once_and_only_for_an_applied_charge() {
    let (_stack, _auth, client) = started().await;
    let user = create_user(&client, "oscar", 300).await;
    fails(
        &client,
        ep::CREDITS_REFUND,
        &change(user.id, 100, "job-x"),
        ErrorCode::NotFound,
    )
    .await;
    let _: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-x")).await;
    assert_eq!(balance(&client, user.id).await, 200);
    fails(
        &client,
        ep::CREDITS_REFUND,
        &change(1, 100, "job-x"),
        ErrorCode::NotFound,
    )
    .await;

    let r: CreditResult = ok(&client, ep::CREDITS_REFUND, &change(user.id, 100, "job-x")).await;
    assert_eq!(
        (r.tokens_used, r.remaining_tokens, r.replayed),
        (100, 300, false)
    );
    let r: CreditResult = ok(&client, ep::CREDITS_REFUND, &change(user.id, 100, "job-x")).await;
    assert_eq!(
        (r.tokens_used, r.remaining_tokens, r.replayed),
        (100, 300, true)
    );
    // Charging the key again is a replay of the original charge: no new charge.
    let c: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-x")).await;
    assert!(c.replayed);
    assert_eq!(balance(&client, user.id).await, 300);
}

#[tokio::test]
async fn an_admin_is_charged_nothing_and_the_key_is_still_recorded() {
    let (_stack, _auth, client) = started().await;
    let _: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: 1,
            tokens_delta: Some(40),
            ..Default::default()
        },
    )
    .await;
    let r: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(1, 100, "admin-job")).await;
    assert_eq!(
        (r.tokens_used, r.remaining_tokens, r.replayed),
        (0, 40, false)
    );
    let r: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(1, 100, "admin-job")).await;
    assert_eq!(
        (r.tokens_used, r.remaining_tokens, r.replayed),
        (0, 40, true)
    );
    let refund: CreditResult = ok(&client, ep::CREDITS_REFUND, &change(1, 100, "admin-job")).await;
    assert_eq!((refund.tokens_used, refund.remaining_tokens), (0, 40));
}

#[tokio::test]
async fn with_two_replicas_200_concurrent_charges_of_100_against_1000_succeed_exactly_10_times() {
    let stack = Stack::start().await;
    let a = stack.spawn("gantry-auth", &[]);
    let b = stack.spawn("gantry-auth", &[]);
    a.wait_ready(READY).await;
    b.wait_ready(READY).await;
    let client = stack.nats.client().await;
    let user = create_user(&client, "paul", 1000).await;

    let results = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        async move {
            call::<_, CreditResult>(
                &client,
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
    assert_eq!(balance(&client, user.id).await, 0);
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

    let per_replica =
        requests_per_replica(&client, "gantry-auth", &subjects::auth(ep::CREDITS_CHARGE)).await;
    assert_eq!(per_replica.len(), 2, "both replicas answer $SRV.STATS");
    assert!(
        per_replica.iter().all(|n| *n > 0),
        "both replicas served charges: {per_replica:?}"
    );
    assert_eq!(per_replica.iter().sum::<u64>(), 200);
    drop((a, b));
}

#[tokio::test]
async fn endpoints_register_and_health_answers_while_the_store_is_unreachable_and_sigterm_still_stops_it(
) {
    let stack = Stack::start().await;
    let dead = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
    let auth = stack.spawn("gantry-auth", &[("MONGODB_URI", dead.as_str())]);
    let status = wait_until(Duration::from_secs(20), || async { auth.readyz().await }).await;
    assert_eq!(
        status,
        Some(503),
        "health should answer at once, not ready:\n{}",
        auth.output()
    );
    let client = stack.nats.client().await;
    let f = wait_until(Duration::from_secs(20), || async {
        match call::<_, Principal>(
            &client,
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
}

#[tokio::test]
async fn sigterm_stops_a_ready_auth_with_code_zero() {
    let (_stack, mut auth, client) = started().await;
    create_user(&client, "sam", 10).await;
    let status = auth
        .terminate(Duration::from_secs(8))
        .await
        .expect("stops within 8 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", auth.output());
    assert!(
        !auth.output().contains("sam-password"),
        "a password reached the output"
    );
}

/// Run a Python script with pymongo against this stack's auth database: `sys.argv[1]` is the
/// store's URI, `sys.argv[2]` the database, then `args`. The store's own interpreter runs it (the
/// store is built on pymongo, so it is there wherever the store is). Returns what it printed.
fn store_script(stack: &Stack, script: &str, args: &[&str]) -> String {
    let store = gantry_testing::util::tool("nx-27017");
    let first = std::fs::read_to_string(&store)
        .unwrap()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut words = first.trim_start_matches("#!").split_whitespace();
    let mut python = words
        .next()
        .expect("nx-27017 starts with a #! line")
        .to_owned();
    if python.ends_with("/env") {
        python = words
            .next()
            .expect("#!/usr/bin/env names the interpreter")
            .to_owned();
    }
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(stack.store.uri())
        .arg(format!("{}auth", stack.prefix))
        .args(args)
        .output()
        .expect("run the store's python");
    assert!(
        out.status.success(),
        "store script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_charge_interrupted_between_its_steps_is_finished_once_by_a_retry() {
    let (stack, _auth, client) = started().await;
    let user = create_user(&client, "quinn", 1000).await;

    // What a replica that died mid-charge leaves behind: one entry written but the balance
    // untouched; one entry written and the balance already moved (with its mark), not yet applied.
    store_script(
        &stack,
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
    );
    assert_eq!(balance(&client, user.id).await, 900);

    let a: CreditResult = ok(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 100, "died-before-balance"),
    )
    .await;
    assert_eq!((a.tokens_used, a.remaining_tokens), (100, 800));
    let b: CreditResult = ok(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 100, "died-after-balance"),
    )
    .await;
    assert_eq!(
        (b.tokens_used, b.remaining_tokens),
        (100, 800),
        "the balance had moved already: not again"
    );
    for key in ["died-before-balance", "died-after-balance"] {
        let r: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, key)).await;
        assert!(r.replayed);
        assert_eq!(r.remaining_tokens, 800);
    }
    let refund: CreditResult = ok(
        &client,
        ep::CREDITS_REFUND,
        &change(user.id, 100, "died-after-balance"),
    )
    .await;
    assert_eq!(refund.remaining_tokens, 900);
}

#[tokio::test]
async fn every_balance_change_is_in_the_ledger_with_user_delta_reason_key_and_time() {
    let (stack, _auth, client) = started().await;
    let user = create_user(&client, "rosa", 500).await;
    let _: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-1")).await;
    let _: CreditResult = ok(&client, ep::CREDITS_CHARGE, &change(user.id, 100, "job-1")).await;
    let _: CreditResult = ok(&client, ep::CREDITS_REFUND, &change(user.id, 100, "job-1")).await;
    let _: User = ok(
        &client,
        ep::USERS_UPDATE,
        &UpdateUser {
            id: user.id,
            tokens_delta: Some(-50),
            reason: Some("cleanup".into()),
            actor_id: Some(1),
            ..Default::default()
        },
    )
    .await;
    let _ = call::<_, CreditResult>(
        &client,
        ep::CREDITS_CHARGE,
        &change(user.id, 1000, "too-much"),
    )
    .await
    .unwrap_err();

    let out = store_script(
        &stack,
        r#"
import sys, json
from pymongo import MongoClient
db = MongoClient(sys.argv[1])[sys.argv[2]]
rows = [{k: d.get(k) for k in ("key", "user_id", "kind", "delta", "reason", "state", "created_at_ms", "actor_id")}
        for d in db.ledger.find({"user_id": int(sys.argv[3])})]
print(json.dumps(rows))
"#,
        &[&user.id.to_string()],
    );
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
    assert_eq!(balance(&client, user.id).await, 450);
}
