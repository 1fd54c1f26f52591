//! # gantry-registry
//!
//! Owns cluster tokens, nodes, driver preferences, jobs and models (database `<prefix>registry`) and serves
//! them on `gantry.registry.v1.*`. Every replica keeps the whole cluster view in memory by
//! following every node's heartbeats itself; requests go to any replica.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service and its endpoints, serve health.
//! - [`registry`]: the request handlers (tokens, register, listings, set_driver, drain).
//! - [`listing`]: the listings as immutable snapshots, serialized once and cut into bodies,
//!   filtered answers and pages.
//! - [`lifecycle`]: the job state machine: pure transitions that return the effects to carry
//!   out, and what settles a job that is over.
//! - [`jobs`]: job records: create, get, list with queue positions, cancel, withdraw, apply
//!   events, settle (refunds, announcements); carries out what [`lifecycle`] decides.
//! - [`results`]: analysis jobs' results: stored by image index, checked whole, paged.
//! - [`models`]: model versions: numbering, listing, withdrawing, crediting nodes, weights.
//! - [`events`]: the durable job event consumer, the max-deliveries advisory, completions.
//! - [`queue`]: the training queue's depth per driver, for `gantry_queue_jobs`.
//! - [`reconcile`]: one replica at a time (a key-value lease) settles what no event will:
//!   refunds still due.
//! - [`liveness`]: restore from the store, follow heartbeats and announcements, expire silent
//!   nodes, batch-write heartbeat state.
//! - [`view`]: the in-memory view, pure and clock-driven.
//! - [`store`]: MongoDB documents and queries.
//! - [`tokens`]: how admins name cluster tokens, and node identities (the secrets themselves:
//!   `gantry_runtime::secrets`).
//! - [`error`]: the error enum and its mapping to service failures.

pub mod callout;
pub mod error;
pub mod events;
pub mod jobs;
pub mod kick;
pub mod lifecycle;
pub mod listing;
pub mod liveness;
pub mod models;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod results;
pub mod startup;
pub mod store;
pub mod tokens;
pub mod view;
