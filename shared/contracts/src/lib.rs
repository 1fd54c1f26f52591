//! # Gantry contracts
//!
//! The contract between Gantry's services: what travels over NATS, under which subject, in which
//! shape. No service talks to another except through what is defined here.
//!
//! ## Conventions
//! - Subjects are `gantry.<service>.v<major>.<operation>` for request/reply service endpoints
//!   (`gantry.auth.v1.login`), `gantry.node.<node_id>.<kind>` for traffic with one node, and
//!   `gantry.jobs.*` / `gantry.events.*` for JetStream streams. A breaking change to a message
//!   gets a new major (`v2`) served beside the old one until no caller uses it.
//! - Payloads are JSON (`serde_json`). Unknown fields are ignored, so adding an optional field is
//!   not a breaking change.
//! - Every message carries the W3C `traceparent` header (set by `gantry-runtime`'s helpers).
//! - A request that fails is answered as a NATS service error: the `Nats-Service-Error-Code`
//!   header holds an HTTP-style status (see [`error::ErrorCode::status`]) and
//!   `Nats-Service-Error` holds `<code>: <message>` (see [`error::ServiceFailure`]). The api maps
//!   those to the HTTP envelope `{"error": {"code", "message"}}` ([`error::ErrorEnvelope`]).
//!
//! ## Layout
//! - [`subjects`]: subject names and builders.
//! - [`analysis`]: classifying images with a trained model on the nodes.
//! - [`services`]: the NATS micro-service names each binary registers under.
//! - [`error`]: error codes and payloads.
//! - [`auth`]: messages of the `gantry.auth.v1.*` endpoints.
//! - [`jobs`]: training jobs, their streams, events and records.
//! - [`models`]: model versions, their cards, and the `models.*` endpoints.
//! - [`registry`]: messages of the `gantry.registry.v1.*` endpoints and node traffic.
//! - [`paging`]: `limit` / `offset` bounds of the paged lists.
//! - [`Timestamp`]: a point in time on the wire.
//!
//! ## The `openapi` feature
//! The reply types the api serves over HTTP derive their OpenAPI schema (poem-openapi's `Object`
//! and `Enum`) behind the `openapi` feature, so the api serves them as they are: one definition
//! per shape, and a contract that drifts from the HTTP document fails to compile instead of
//! answering 500. Services that only speak NATS leave the feature off. Schema names and
//! descriptions are those the admin page has always published (`#[oai(rename = "...")]`), so
//! the document is unchanged for its seven endpoints.

pub mod analysis;
pub mod auth;
pub mod error;
#[cfg(feature = "openapi")]
mod examples;
pub mod jobs;
pub mod models;
#[cfg(feature = "openapi")]
mod openapi;
pub mod paging;
pub mod registry;
pub mod services;
pub mod subjects;
mod timestamp;

pub use timestamp::{rfc3339_millis, Timestamp};
