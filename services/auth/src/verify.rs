//! `verify`: who a bearer token or a session id belongs to.

use gantry_contracts::auth::{Credential, Principal, VerifyRequest};

use crate::app::App;
use crate::error::AuthResult;
use crate::{sessions, tokens};

/// `verify`: a wrong, revoked or expired credential, or a deactivated user, is unauthorized.
pub async fn verify(app: App, req: VerifyRequest) -> AuthResult<Principal> {
    match req.credential {
        Credential::Bearer { token } => tokens::verify(&app, &token).await,
        Credential::Session { session_id } => sessions::verify(&app, &session_id).await,
    }
}
