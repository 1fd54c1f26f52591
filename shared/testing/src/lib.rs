//! # Gantry test fixtures
//!
//! Real infrastructure for end-to-end tests: a `nats-server` with JetStream and a MongoDB-wire
//! store (`nx-27017`), each on a free port with its data in a temporary directory, and the real
//! service binaries started against them. Everything is killed when its handle drops, so a
//! failing test leaves nothing behind.
//!
//! The tools are found on `PATH`, in `$GANTRY_TOOLS_BIN`, or in the tools environment that
//! `deploy/local/*.sh` install (`$GANTRY_TOOLS_DIR/tools/bin`, default `~/.cache/gantry`).
//! Service binaries are found next to the test executable's target directory; `deploy/local/test.sh`
//! builds them first.
//!
//! ## Layout
//! - [`infra`]: [`Nats`](infra::Nats) and [`Store`](infra::Store).
//! - [`service`]: [`ServiceProcess`](service::ServiceProcess), a running service binary.
//! - [`util`]: free ports, unique database prefixes, polling.

pub mod infra;
pub mod service;
pub mod util;

pub use infra::{Nats, Store};
pub use service::{Core, ServiceProcess, Stack, ADMIN_PASSWORD, ADMIN_TOKEN};
pub use util::{free_port, metric, requests_per_replica, unique_prefix, wait_until};
