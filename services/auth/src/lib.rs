//! # gantry-auth
//!
//! Owns users, sessions, API tokens and the credit ledger (database `<prefix>auth`) and serves
//! them on `gantry.auth.v1.*`.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service and its endpoints, serve health, start the
//!   background work.
//! - [`bootstrap`]: indexes, the first admin and `GANTRY_ADMIN_API_TOKEN`, once the store answers.
//! - [`app`]: what the handlers share; settings.
//! - [`error`]: the service's error type and its mapping to service errors.
//! - [`store`]: stored shapes, collections, indexes, shared queries.
//! - [`domain`]: usernames, e-mails, passwords, token names and keys, parsed once.
//! - [`verify`]: the `verify` endpoint.
//! - [`sessions`]: `login`, `logout`, session verification, the failed-login limiter.
//! - [`tokens`]: `tokens.list`, `tokens.create`, `tokens.revoke`, bearer verification.
//! - [`users`]: `users.list`, `users.get`, `users.create`, `users.update`, `users.delete`.
//! - [`credits`]: `credits.charge`, `credits.refund`, balance adjustments, the ledger protocol.
//! - [`ledger`]: `users.ledger`, a user's ledger as admins read it.

pub mod app;
pub mod bootstrap;
pub mod credits;
pub mod domain;
pub mod error;
pub mod ledger;
pub mod sessions;
pub mod startup;
pub mod store;
pub mod tokens;
pub mod users;
pub mod verify;
