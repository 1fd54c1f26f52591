//! # gantry-trainer
//!
//! One per GPU machine: joins the cluster with a cluster token, heartbeats, pulls jobs and trains
//! them.
//!
//! ## Layout
//! - [`startup`]: connect, register the micro service, serve health.

pub mod startup;
