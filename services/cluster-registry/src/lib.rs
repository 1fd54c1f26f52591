//! # gantry-registry
//!
//! Owns cluster tokens, nodes, driver preferences, jobs and models (database `<prefix>registry`)
//! and serves them on `gantry.registry.v1.*`.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service and its endpoints, serve health.

pub mod startup;
