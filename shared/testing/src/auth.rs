//! The auth service's NATS endpoints, typed: calls that must succeed or fail with a code,
//! credentials, users, logins and balances.

use gantry_contracts::auth::{
    CreateUser, Credential, CreditChange, LoginRequest, LoginResponse, Principal, User, UserRef,
    VerifyRequest,
};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::subjects::{self, auth as ep};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cluster::request;
use crate::stack::TestStack;

/// A bearer token as a credential.
pub fn bearer(token: &str) -> Credential {
    Credential::Bearer {
        token: token.into(),
    }
}

/// A session id as a credential.
pub fn session(id: &str) -> Credential {
    Credential::Session {
        session_id: id.into(),
    }
}

/// A credit change of `amount` for `user_id` under idempotency `key`.
pub fn change(user_id: i64, amount: i64, key: &str) -> CreditChange {
    CreditChange {
        user_id,
        amount,
        key: key.into(),
        reason: "test".into(),
    }
}

impl TestStack {
    /// One request to an auth endpoint.
    pub async fn auth_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Result<Resp, ServiceFailure> {
        request(&self.client, subjects::auth(endpoint), req).await
    }

    /// Like [`TestStack::auth_call`], for a request that must succeed.
    pub async fn auth_ok<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Resp {
        self.auth_call(endpoint, req)
            .await
            .unwrap_or_else(|f| panic!("{endpoint} failed: {f}"))
    }

    /// Like [`TestStack::auth_call`], for a request that must fail with `code`; returns the
    /// message.
    pub async fn auth_fails<Req: Serialize>(
        &self,
        endpoint: &str,
        req: &Req,
        code: ErrorCode,
    ) -> String {
        match self.auth_call::<Req, Value>(endpoint, req).await {
            Ok(v) => panic!("{endpoint} succeeded, expected {code}: {v}"),
            Err(f) => {
                assert_eq!(f.code, code, "{endpoint}: {f}");
                f.message
            }
        }
    }

    /// `verify` a credential.
    pub async fn verify(&self, credential: Credential) -> Result<Principal, ServiceFailure> {
        self.auth_call(ep::VERIFY, &VerifyRequest { credential })
            .await
    }

    /// A user created through auth with `tokens` credit; its password is `<name>-password`.
    pub async fn auth_user(&self, name: &str, tokens: i64) -> User {
        self.auth_ok(
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

    /// Log in through auth as `name` from client address `from`.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        from: &str,
    ) -> Result<LoginResponse, ServiceFailure> {
        self.auth_call(
            ep::LOGIN,
            &LoginRequest {
                username: name.into(),
                password: password.into(),
                client: from.into(),
            },
        )
        .await
    }

    /// A user's balance, as auth tells it.
    pub async fn auth_balance(&self, user_id: i64) -> i64 {
        self.auth_ok::<_, User>(ep::USERS_GET, &UserRef { user_id })
            .await
            .tokens
    }
}
