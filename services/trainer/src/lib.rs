//! # gantry-trainer
//!
//! One per GPU machine: joins the cluster with a cluster token, heartbeats, pulls jobs and trains
//! them.
//!
//! ## Layout
//! - [`startup`]: inventory, connect, register the micro service, serve health, join, run.
//! - [`inventory`]: CUDA/ROCm devices (tch, NVML, rocm-smi), host memory and CPUs.
//! - [`node`]: joining, heartbeats, control messages (driver, drain, leave), re-registering.
//! - [`cache`]: the dataset cache and its least-recently-used eviction.
//! - [`jobs`]: pulling training jobs, training them, their events, checkpoints, models, cancels.

pub mod cache;
pub mod inventory;
pub mod jobs;
pub mod node;
pub mod startup;
