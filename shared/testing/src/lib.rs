//! # Gantry test fixtures
//!
//! Real infrastructure for end-to-end tests: a `nats-server` with JetStream and a MongoDB-wire
//! store (`nx-27017`), each on a free port with its data in a temporary directory, and the real
//! service binaries started against them. Everything is killed when its handle drops, so a
//! failing test leaves nothing behind.
//!
//! Every end-to-end test runs inside [`TestStack::run`], which bounds its time and prints the
//! services' output when it fails:
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use gantry_testing::TestStack;
//! TestStack::run(Duration::from_secs(120), |mut stack| async move {
//!     stack.start_core().await;
//!     let (status, users) = stack.admin_get("/admin/api/users").await;
//!     assert_eq!(status, 200, "{users}");
//! })
//! .await;
//! # }
//! ```
//!
//! The tools are found on `PATH`, in `$GANTRY_TOOLS_BIN`, or in the tools environment that
//! `deploy/local/*.sh` install (`$GANTRY_TOOLS_DIR/tools/bin`, default `~/.cache/gantry`).
//! Service binaries are found next to the test executable's target directory; `deploy/local/test.sh`
//! builds them first.
//!
//! ## Layout
//! - [`stack`]: [`TestStack`], its services and [`TestStack::run`].
//! - [`api`]: HTTP requests to the api, users and balances.
//! - [`auth`]: the auth service's NATS endpoints, credentials, users and logins.
//! - [`jobs`]: submitting, reading and waiting for training jobs, their events and queue.
//! - [`cluster`]: NATS endpoint requests, the registry's tokens and nodes, trainers.
//! - [`logs`]: [`Logs`], the services' output kept for failure reports.
//! - [`infra`]: [`Nats`](infra::Nats) and [`Store`](infra::Store).
//! - [`service`]: [`ServiceProcess`](service::ServiceProcess), a running service binary.
//! - [`otlp`]: [`OtlpReceiver`](otlp::OtlpReceiver), a real OTLP trace receiver (HTTP and gRPC).
//! - [`util`]: free ports, unique database prefixes, polling, metrics.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod infra;
pub mod jobs;
pub mod logs;
pub mod netns;
pub mod otlp;
pub mod service;
pub mod stack;
pub mod util;

pub use api::send;
pub use cluster::{request, request_within, INTERVAL, JOIN, MISSES, POLL_REQUEST};
pub use infra::{Nats, Store};
pub use jobs::{is_final, kinds};
pub use logs::Logs;
pub use service::ServiceProcess;
pub use stack::{TestStack, ADMIN_PASSWORD, ADMIN_TOKEN, CORE, READY};
pub use util::{free_port, metric, requests_per_replica, tool, unique_prefix, wait_until};
