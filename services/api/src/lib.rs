//! # gantry-api
//!
//! The stateless HTTP edge: the admin and user REST API with its OpenAPI docs, speaking NATS to
//! the services behind it.
//!
//! ## Layout
//! - [`startup`]: connect, build the app, serve HTTP (health included) until shutdown.
//! - [`app`]: the routes, the error envelope, the body limit, request tracing.
//! - [`state`]: what handlers share.
//! - [`auth`]: credentials (bearer, session cookie), verification cache, same-origin check.
//! - [`error`]: the error type of every operation and the envelope.
//! - [`docs`]: the OpenAPI spec, Swagger UI, the rendered admin page, `/api/admin` aliases.
//! - [`data_path`]: the data-root path rules, one function for browse, training and analysis.
//! - [`enqueue`]: storing a job's snapshot and publishing its message, for training and analysis.
//! - [`listing`]: the cluster listings passed through as the registry serialized them, kept
//!   per query under their ETag, gzipped once, 304 on `If-None-Match`.
//! - One module per feature: [`browse`], [`train`], [`analyze`], [`results`], [`jobs`], [`users`], [`cluster`], [`session`], [`tokens`].

pub mod analyze;
pub mod app;
pub mod auth;
pub mod browse;
pub mod cluster;
pub mod data_path;
pub mod datasets;
pub mod docs;
pub mod enqueue;
pub mod error;
pub mod jobs;
pub mod listing;
pub mod results;
pub mod session;
pub mod slots;
pub mod startup;
pub mod state;
pub mod tags;
pub mod teach;
pub mod tokens;
pub mod train;
pub mod users;
