//! Users through the auth service over NATS: validation, duplicates, changes, and the last
//! active admin.

use std::time::Duration;

use gantry_contracts::auth::{Role, UpdateUser, User, UserList, UserRef};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::subjects::auth as ep;
use gantry_testing::TestStack;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn users_are_validated_and_duplicates_conflict() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
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
            stack.auth_fails(ep::USERS_CREATE, bad, ErrorCode::BadRequest).await;
        }
        let ivy: User = stack.auth_ok(ep::USERS_CREATE, &good).await;
        assert_eq!(
            (ivy.id, ivy.tokens, ivy.role, ivy.active),
            (2, 5, Role::User, true)
        );
        stack.auth_fails(ep::USERS_CREATE,
            &json!({"username": "ivy", "email": "other@example.com", "password": "long-enough"}),
            ErrorCode::Conflict,
        )
        .await;
        stack.auth_fails(ep::USERS_CREATE,
            &json!({"username": "other", "email": "ivy@example.com", "password": "long-enough"}),
            ErrorCode::Conflict,
        )
        .await;
        let admin2: User = stack.auth_ok(ep::USERS_CREATE, &json!({"username": "jack", "email": "jack@example.com", "password": "long-enough", "role": "admin"})).await;
        assert_eq!((admin2.id, admin2.role), (3, Role::Admin));
        stack.auth_fails(ep::USERS_GET,
            &UserRef { user_id: 99 },
            ErrorCode::NotFound,
        )
        .await;
        stack.auth_fails(ep::USERS_UPDATE,
            &UpdateUser {
                id: 99,
                ..Default::default()
            },
            ErrorCode::NotFound,
        )
        .await;

        // Email and password changes; a taken email conflicts.
        stack.auth_fails(ep::USERS_UPDATE,
            &UpdateUser {
                id: ivy.id,
                email: Some("jack@example.com".into()),
                ..Default::default()
            },
            ErrorCode::Conflict,
        )
        .await;
        let changed: User = stack.auth_ok(ep::USERS_UPDATE,
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
            stack.login("ivy", "ivy-password", "10.0.2.1")
                .await
                .unwrap_err()
                .code,
            ErrorCode::Unauthorized
        );
        assert!(stack.login("ivy", "new-password", "10.0.2.1")
            .await
            .is_ok());

        let list: UserList = stack.auth_ok(ep::USERS_LIST, &json!({})).await;
        assert_eq!(
            list.users.iter().map(|u| u.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    })
    .await;
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_or_deactivated() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-auth"]).await;
        stack
            .auth_fails(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: 1,
                    role: Some(Role::User),
                    ..Default::default()
                },
                ErrorCode::Conflict,
            )
            .await;
        stack
            .auth_fails(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: 1,
                    active: Some(false),
                    ..Default::default()
                },
                ErrorCode::Conflict,
            )
            .await;
        let other = stack.auth_user("kate", 0).await;
        let promoted: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: other.id,
                    role: Some(Role::Admin),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(promoted.role, Role::Admin);
        let demoted: User = stack
            .auth_ok(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: 1,
                    role: Some(Role::User),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(demoted.role, Role::User);
        stack
            .auth_fails(
                ep::USERS_UPDATE,
                &UpdateUser {
                    id: other.id,
                    active: Some(false),
                    ..Default::default()
                },
                ErrorCode::Conflict,
            )
            .await;
    })
    .await;
}
