//! # gantry-auth
//!
//! Owns users, sessions, API tokens and the credit ledger (database `<prefix>auth`) and serves
//! them on `gantry.auth.v1.*`.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service and its endpoints, serve health.

pub mod startup;
