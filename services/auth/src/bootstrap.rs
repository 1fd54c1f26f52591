//! Start-up work that needs the store: indexes, the first admin, and `GANTRY_ADMIN_API_TOKEN`.
//! Idempotent, so every start and every replica runs it; replicas racing to create the first
//! admin are settled by the unique indexes (the loser sees the winner's admin and stops).

use gantry_contracts::auth::Role;
use gantry_runtime::{secrets, Config};
use secrecy::{ExposeSecret, SecretString};

use crate::app::App;
use crate::domain::{Email, Password, TokenName, Username};
use crate::error::AuthError;
use crate::store::{now_ms, UserDoc};
use crate::{tokens, users};

/// The first admin as configured, checked before anything starts.
pub struct FirstAdmin {
    username: Username,
    email: Email,
    password: Option<Password>,
    api_token: Option<SecretString>,
}

impl FirstAdmin {
    /// Check `GANTRY_ADMIN_USER`, `GANTRY_ADMIN_EMAIL` and `GANTRY_ADMIN_PASSWORD` (the token's
    /// length is checked by the configuration itself). Secrets are never echoed.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let username = Username::parse(&config.admin_user).map_err(|e| {
            anyhow::anyhow!("invalid GANTRY_ADMIN_USER={:?}: {e}", config.admin_user)
        })?;
        let email = Email::parse(&config.admin_email).map_err(|e| {
            anyhow::anyhow!("invalid GANTRY_ADMIN_EMAIL={:?}: {e}", config.admin_email)
        })?;
        let password = config
            .admin_password
            .as_ref()
            .map(|p| Password::parse(p.expose_secret()))
            .transpose()
            .map_err(|e| anyhow::anyhow!("invalid GANTRY_ADMIN_PASSWORD=<redacted>: {e}"))?;
        Ok(Self {
            username,
            email,
            password,
            api_token: config.admin_api_token.clone(),
        })
    }
}

/// Create the indexes, then the first admin and its configured token when missing.
pub async fn prepare(app: &App, first: &FirstAdmin) -> anyhow::Result<()> {
    app.store().create_indexes().await?;
    ensure_admin(app, first).await?;
    ensure_admin_token(app, first).await?;
    Ok(())
}

async fn ensure_admin(app: &App, first: &FirstAdmin) -> anyhow::Result<()> {
    let store = app.store();
    if !store.admins().await?.is_empty() {
        return Ok(());
    }
    // Hash before looking: the checks below and the insert then follow each other closely.
    let (password, generated) = match &first.password {
        Some(p) => (p.clone(), false),
        None => (
            Password::parse(secrets::generate_password().expose_secret())
                .map_err(anyhow::Error::from)?,
            true,
        ),
    };
    let password_hash = users::hash_password(&password)
        .await
        .map_err(anyhow::Error::from)?;
    for _ in 0..5 {
        if !store.admins().await?.is_empty() {
            return Ok(());
        }
        let user = UserDoc {
            id: 1,
            username: first.username.as_ref().to_owned(),
            email: first.email.as_ref().to_owned(),
            password_hash: password_hash.clone(),
            role: Role::Admin,
            tokens: 0,
            active: true,
            created_at_ms: now_ms(),
        };
        // On an empty store the first admin is user 1, whichever replica wins.
        let empty = store
            .users
            .find_one(mongodb::bson::doc! {})
            .await?
            .is_none();
        let created = if empty {
            let inserted = store.insert_user(&user).await?;
            if inserted {
                store.raise_user_counter(1).await?;
            }
            inserted.then_some(user)
        } else {
            // Not empty: maybe another replica's admin just landed (then look again rather than
            // use up an id), or the name belongs to an ordinary user (then say so).
            let by_name = store.user_by_name(first.username.as_ref()).await?;
            let by_email = store.user_by_email(first.email.as_ref()).await?;
            match by_name.or(by_email) {
                Some(u) if u.role == Role::Admin => continue,
                Some(_) => anyhow::bail!(
                    "no admin exists and the first admin cannot be created: GANTRY_ADMIN_USER or \
                     GANTRY_ADMIN_EMAIL belongs to an ordinary user; choose others"
                ),
                None => match users::insert_new(store, user, &first.email, &first.username).await {
                    Ok(u) => Some(u),
                    Err(AuthError::Conflict(_)) => None,
                    Err(e) => return Err(e.into()),
                },
            }
        };
        if let Some(admin) = created {
            tracing::info!(user_id = admin.id, username = %admin.username, "first admin created");
            if generated {
                // Shown once, on stdout and not in the structured logs.
                println!(
                    "gantry-auth: created the first admin '{}' with the generated password: {}",
                    admin.username,
                    password.expose()
                );
                println!("gantry-auth: the password is shown only this once; change it after logging in.");
            }
            return Ok(());
        }
    }
    anyhow::bail!("could not create the first admin after 5 attempts")
}

async fn ensure_admin_token(app: &App, first: &FirstAdmin) -> anyhow::Result<()> {
    let Some(token) = &first.api_token else {
        return Ok(());
    };
    let store = app.store();
    let secret = token.expose_secret();
    // Stored already (maybe revoked since: then it stays revoked).
    if store
        .token_by_hash(&secrets::digest(secret))
        .await?
        .is_some()
    {
        return Ok(());
    }
    let admins = store.admins().await?;
    let owner = admins
        .iter()
        .find(|a| a.active && a.username == first.username.as_ref())
        .or_else(|| admins.iter().find(|a| a.active))
        .ok_or_else(|| anyhow::anyhow!("no active admin to own GANTRY_ADMIN_API_TOKEN"))?;
    let name = TokenName::parse("GANTRY_ADMIN_API_TOKEN").map_err(anyhow::Error::from)?;
    if store
        .insert_token(&tokens::new_doc(owner.id, &name, secret))
        .await?
    {
        tracing::info!(user_id = owner.id, "GANTRY_ADMIN_API_TOKEN stored");
    }
    Ok(())
}
