//! # gantry-registry
//!
//! Owns cluster tokens, nodes, driver preferences, jobs and models (database `<prefix>registry`) and serves
//! them on `gantry.registry.v1.*`. Every replica keeps the whole cluster view in memory by
//! following every node's heartbeats itself; requests go to any replica.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service and its endpoints, serve health.
//! - [`registry`]: the request handlers (tokens, register, listings, set_driver, drain).
//! - [`jobs`]: jobs and models: records, the job event consumer, cancel, refunds, the
//!   max-deliveries advisory, queue positions.
//! - [`liveness`]: restore from the store, follow heartbeats and announcements, expire silent
//!   nodes, batch-write heartbeat state.
//! - [`view`]: the in-memory view, pure and clock-driven.
//! - [`store`]: MongoDB documents and queries.
//! - [`tokens`]: how admins name cluster tokens, and node identities (the secrets themselves:
//!   `gantry_runtime::secrets`).
//! - [`error`]: the error enum and its mapping to service failures.

pub mod error;
pub mod jobs;
pub mod liveness;
pub mod registry;
pub mod startup;
pub mod store;
pub mod tokens;
pub mod view;
