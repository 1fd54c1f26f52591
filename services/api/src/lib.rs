//! # gantry-api
//!
//! The stateless HTTP edge: the admin and user REST API with its OpenAPI docs, speaking NATS to
//! the services behind it.
//!
//! ## Layout
//! - [`startup`]: connect, build the app, serve HTTP (health included) until shutdown.

pub mod startup;
