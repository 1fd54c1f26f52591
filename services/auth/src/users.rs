//! `users.list`, `users.get`, `users.create`, `users.update`, `users.delete`.

use gantry_contracts::auth::{
    CreateUser, DeleteUser, Role, UpdateUser, User, UserList, UserQuery, UserRef, MAX_TOKENS,
};
use gantry_contracts::paging::MAX_LIMIT;
use gantry_runtime::secrets;
use mongodb::bson::{doc, Bson, Document};
use serde_json::{Map, Value};

use crate::app::App;
use crate::credits;
use crate::domain::{Email, Password, Username};
use crate::error::{is_duplicate_key, AuthError, AuthResult};
use crate::store::{now_ms, Store, UserDoc};

/// Hash on a blocking thread: argon2id is deliberately slow.
pub async fn hash_password(password: &Password) -> AuthResult<String> {
    let password = password.expose().to_owned();
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| anyhow::anyhow!("password hashing task failed: {e}"))??;
    Ok(hash)
}

/// `users.list`: a page of the users matching the filters, by id.
pub async fn list(app: App, q: UserQuery) -> AuthResult<UserList> {
    let page = q.page().check(MAX_LIMIT).map_err(AuthError::BadRequest)?;
    let mut filter = Document::new();
    if let Some(role) = q.role {
        filter.insert("role", role.as_str());
    }
    if let Some(active) = q.active {
        // `active` may read back as 0/1 after a `$set` on the local store (DESIGN).
        let same: [Bson; 2] = [active.into(), i32::from(active).into()];
        filter.insert("active", doc! { "$in": same.to_vec() });
    }
    let (users, total) = app
        .store()
        .users_page(filter, page.limit, page.offset)
        .await?;
    Ok(UserList {
        users: users.iter().map(UserDoc::to_user).collect(),
        total,
    })
}

/// `users.get`.
pub async fn get(app: App, req: UserRef) -> AuthResult<User> {
    Ok(load(app.store(), req.user_id).await?.to_user())
}

async fn load(store: &Store, id: i64) -> AuthResult<UserDoc> {
    store
        .user(id)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no user with id {id}")))
}

/// Why an insert was refused: the username or the e-mail is taken.
async fn taken(store: &Store, username: &Username, email: &Email) -> AuthResult<Option<AuthError>> {
    if store.user_by_name(username.as_ref()).await?.is_some() {
        return Ok(Some(AuthError::Conflict(format!(
            "username '{}' is already taken",
            username.as_ref()
        ))));
    }
    if store.user_by_email(email.as_ref()).await?.is_some() {
        return Ok(Some(AuthError::Conflict(format!(
            "email '{}' is already in use",
            email.as_ref()
        ))));
    }
    Ok(None)
}

/// Insert a new user under the next free id, retrying when an id is taken (a crashed
/// start-up may have used one without moving the counter). `Err(Conflict)` when the username or
/// e-mail is taken.
pub async fn insert_new(
    store: &Store,
    mut user: UserDoc,
    email: &Email,
    username: &Username,
) -> AuthResult<UserDoc> {
    for _ in 0..5 {
        user.id = store.next_user_id().await?;
        if store.insert_user(&user).await? {
            return Ok(user);
        }
        if let Some(conflict) = taken(store, username, email).await? {
            return Err(conflict);
        }
    }
    Err(anyhow::anyhow!("could not find a free user id after 5 tries").into())
}

/// `users.create`.
pub async fn create(app: App, req: CreateUser) -> AuthResult<User> {
    let username = Username::parse(&req.username)?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(&req.password)?;
    let tokens = req.tokens.unwrap_or(0);
    if !(0..=MAX_TOKENS).contains(&tokens) {
        return Err(AuthError::BadRequest(format!(
            "tokens must be between 0 and {MAX_TOKENS}"
        )));
    }
    let store = app.store();
    if let Some(conflict) = taken(store, &username, &email).await? {
        return Err(conflict);
    }
    let user = UserDoc {
        id: 0,
        username: username.as_ref().to_owned(),
        email: email.as_ref().to_owned(),
        password_hash: hash_password(&password).await?,
        role: req.role.unwrap_or(Role::User),
        tokens,
        active: true,
        created_at_ms: now_ms(),
    };
    let user = insert_new(store, user, &email, &username).await?;
    if tokens > 0 {
        credits::record_opening_balance(store, user.id, tokens).await?;
    }
    tracing::info!(user_id = user.id, role = user.role.as_str(), "user created");
    Ok(user.to_user())
}

/// The active admins other than `except`.
async fn other_active_admins(store: &Store, except: i64) -> AuthResult<usize> {
    Ok(store
        .admins()
        .await?
        .iter()
        .filter(|a| a.active && a.id != except)
        .count())
}

/// `users.update`. Everything is checked before anything is written; the balance adjustment
/// (the only part that can be refused by the state of the store) goes first.
pub async fn update(app: App, req: UpdateUser) -> AuthResult<User> {
    let store = app.store();
    let user = load(store, req.id).await?;
    let email = req.email.as_deref().map(Email::parse).transpose()?;
    let password = req.password.as_deref().map(Password::parse).transpose()?;
    let reason = req
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("adjusted by an admin");
    if reason.len() > 500 {
        return Err(AuthError::BadRequest(
            "reason must be at most 500 bytes".into(),
        ));
    }

    let demoted = user.role == Role::Admin && req.role == Some(Role::User);
    let deactivated = user.active && req.active == Some(false);
    let loses_admin = user.role == Role::Admin && user.active && (demoted || deactivated);
    if loses_admin && other_active_admins(store, user.id).await? == 0 {
        return Err(AuthError::Conflict(
            "this is the last active admin: make another admin first".into(),
        ));
    }
    if let Some(email) = &email {
        if let Some(other) = store.user_by_email(email.as_ref()).await? {
            if other.id != user.id {
                return Err(AuthError::Conflict(format!(
                    "email '{}' is already in use",
                    email.as_ref()
                )));
            }
        }
    }

    if let Some(delta) = req.tokens_delta.filter(|d| *d != 0) {
        credits::adjust(store, user.id, delta, reason, req.actor_id).await?;
    }

    let mut set = Document::new();
    if let Some(role) = req.role.filter(|r| *r != user.role) {
        set.insert("role", role.as_str());
    }
    if let Some(active) = req.active.filter(|a| *a != user.active) {
        set.insert("active", active);
    }
    if let Some(email) = email.filter(|e| e.as_ref() != user.email) {
        set.insert("email", email.as_ref());
    }
    let password_changed = password.is_some();
    if let Some(password) = &password {
        set.insert("password_hash", hash_password(password).await?);
    }
    if !set.is_empty() {
        match store
            .users
            .update_one(doc! { "_id": user.id }, doc! { "$set": set })
            .await
        {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                return Err(AuthError::Conflict("email is already in use".into()));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("updating a user").into()),
        }
    }

    // Two admins demoted at once could each have seen the other as the remaining one: check
    // again and undo ours if nobody is left.
    if loses_admin && other_active_admins(store, user.id).await? == 0 {
        let undo = doc! { "$set": { "role": user.role.as_str(), "active": user.active } };
        store
            .users
            .update_one(doc! { "_id": user.id }, undo)
            .await
            .map_err(anyhow::Error::new)?;
        return Err(AuthError::Conflict(
            "this is the last active admin: make another admin first".into(),
        ));
    }

    if password_changed || deactivated {
        store.delete_sessions_of(user.id).await?;
    }
    app.announce_revocation(user.id).await;
    tracing::info!(user_id = user.id, actor_id = req.actor_id, "user updated");
    Ok(load(store, user.id).await?.to_user())
}

const LAST_ADMIN: &str = "this is the last active admin: make another admin first";

/// `users.delete`: the user document goes (so the username and e-mail may be used again);
/// sessions end and API tokens are revoked at once; the ledger, jobs and models stay under the
/// user's id, which is never handed out again.
pub async fn delete(app: App, req: DeleteUser) -> AuthResult<Value> {
    let store = app.store();
    let user = load(store, req.user_id).await?;
    if req.actor_id == user.id {
        return Err(AuthError::Conflict(
            "you cannot delete yourself: ask another admin".into(),
        ));
    }
    let was_active_admin = user.role == Role::Admin && user.active;
    if was_active_admin && other_active_admins(store, user.id).await? == 0 {
        return Err(AuthError::Conflict(LAST_ADMIN.into()));
    }
    // The raw document, so that undoing puts back everything it held (ledger marks too).
    let raw = store.users.clone_with_type::<Document>();
    let Some(stored) = raw
        .find_one_and_delete(doc! { "_id": user.id })
        .await
        .map_err(|e| anyhow::Error::new(e).context("deleting a user"))?
    else {
        return Err(AuthError::NotFound(format!("no user with id {}", user.id)));
    };
    // Two admins deleting each other at once could each have seen the other as the one left:
    // look again, and put ours back if nobody is.
    if was_active_admin && other_active_admins(store, user.id).await? == 0 {
        raw.insert_one(&stored)
            .await
            .map_err(|e| anyhow::Error::new(e).context("restoring the last admin"))?;
        return Err(AuthError::Conflict(LAST_ADMIN.into()));
    }
    store.delete_sessions_of(user.id).await?;
    store
        .tokens
        .update_many(
            doc! { "user_id": user.id, "revoked_at_ms": { "$exists": false } },
            doc! { "$set": { "revoked_at_ms": now_ms() } },
        )
        .await
        .map_err(|e| anyhow::Error::new(e).context("revoking a deleted user's API tokens"))?;
    app.announce_revocation(user.id).await;
    tracing::info!(user_id = user.id, actor_id = req.actor_id, "user deleted");
    Ok(Value::Object(Map::new()))
}
